"""The four components (content, collaborative, success, ranker): their models, the features
they share and the single spelling of their scores."""

COMPONENTS = ("content", "collaborative", "success", "ranker")
