"""The four components, in the order every table, loop and report uses."""

COMPONENTS = ("content", "collaborative", "success", "ranker")
