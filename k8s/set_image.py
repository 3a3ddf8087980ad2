"""Pin an overlay's image by digest: what `kustomize edit set image NAME=REPO@sha256:...` does, here
without kustomize and keeping the kustomization's comments. The build runs it after pushing:

    make k8s-image IMAGE=registry.example.com/pmis/pmis-recommender DIGEST=sha256:<64 hex>
    .venv/bin/python k8s/set_image.py [--overlay overlays/prod] REPO@sha256:<64 hex>
    .venv/bin/python k8s/set_image.py [--overlay overlays/prod] REPO --digest sha256:<64 hex>

The entry `name: pmis-recommender` of the overlay's `images:` gets `newName: REPO` and
`digest: sha256:...` (a `newTag` is dropped: with a digest it would be ignored or misread). A tag
(`REPO:1.2`) is refused: the point is that what runs is exactly what was built.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

K8S_DIR = Path(__file__).resolve().parent
IMAGE_NAME = "pmis-recommender"  # the name the base's containers use
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# [registry[:port]/]path/name, lowercase, no tag and no digest
_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REPOSITORY = re.compile(rf"(?:[a-z0-9]+(?:[.-][a-z0-9]+)*(?::[0-9]+)?/)?{_PART}(?:/{_PART})*")


class ImageError(ValueError):
    pass


def parse(image: str, digest: str | None = None) -> tuple[str, str]:
    """(repository, digest) from REPO@sha256:... or REPO plus a digest."""
    if "@" in image:
        image, _, embedded = image.partition("@")
        if digest and digest != embedded:
            raise ImageError(f"two different digests: {embedded} and {digest}")
        digest = embedded
    if not digest:
        raise ImageError("no digest: give REPO@sha256:<64 hex> or --digest sha256:<64 hex>")
    if not DIGEST.fullmatch(digest):
        raise ImageError(f"not a sha256 digest (sha256: and 64 lowercase hex digits): {digest!r}")
    if not REPOSITORY.fullmatch(image):
        last = image.rsplit("/", 1)[-1]
        why = " (a tag: pin a digest instead)" if ":" in last else ""
        raise ImageError(f"not an image repository{why}: {image!r}")
    return image, digest


def set_image(kustomization: Path, repository: str, digest: str, name: str = IMAGE_NAME) -> bool:
    """Rewrite the `images:` entry `name` of a kustomization.yaml in place (comments kept); True if
    the file changed."""
    lines = kustomization.read_text(encoding="utf-8").splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if re.match(r"images:\s*(#.*)?$", line)), None)
    fields = [f"newName: {repository}", f"digest: {digest}"]
    if start is None:  # no images: block yet
        new = [*lines, *([] if not lines or lines[-1].endswith("\n") else ["\n"]),
               "images:\n", f"  - name: {name}\n", *(f"    {f}\n" for f in fields)]
    else:
        end = next((i for i in range(start + 1, len(lines)) if re.match(r"[^\s#-]", lines[i])), len(lines))
        entry = next((i for i in range(start + 1, end)
                      if re.match(rf"\s*-\s+name:\s*[\"']?{re.escape(name)}[\"']?\s*(#.*)?$", lines[i])), None)
        if entry is None:
            indent = "  "
            new = [*lines[:end], f"{indent}- name: {name}\n", *(f"{indent}  {f}\n" for f in fields), *lines[end:]]
        else:
            dash = len(lines[entry]) - len(lines[entry].lstrip())
            field_indent = " " * (dash + 2)
            stop = next((i for i in range(entry + 1, end)
                         if lines[i].strip() and not lines[i].lstrip().startswith("#")
                         and len(lines[i]) - len(lines[i].lstrip()) <= dash), end)
            kept = [line for line in lines[entry + 1:stop]
                    if not re.match(r"\s*(newName|newTag|digest):", line)]
            new = [*lines[:entry + 1], *(f"{field_indent}{f}\n" for f in fields), *kept, *lines[stop:]]
    text = "".join(new)
    doc = yaml.safe_load(text)
    entries = [e for e in doc.get("images", []) if e.get("name") == name]
    if entries != [{"name": name, "newName": repository, "digest": digest}]:
        raise ImageError(f"{kustomization}: could not set the image entry (got {entries})")
    if text == "".join(lines):
        return False
    kustomization.write_text(text, encoding="utf-8")
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="pin an overlay's image by digest (kustomize edit set image)")
    p.add_argument("image", help="REPO@sha256:<64 hex>, or REPO with --digest")
    p.add_argument("--digest", help="sha256:<64 hex>")
    p.add_argument("--overlay", default="overlays/prod", help="the overlay, relative to k8s/ (default: overlays/prod)")
    p.add_argument("--name", default=IMAGE_NAME, help=f"the image name the manifests use (default: {IMAGE_NAME})")
    a = p.parse_args(argv)
    path = K8S_DIR / a.overlay / "kustomization.yaml"
    try:
        repository, digest = parse(a.image, a.digest)
        changed = set_image(path, repository, digest, a.name)
    except (ImageError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{path.relative_to(K8S_DIR.parent)}: {a.name} -> {repository}@{digest}"
          + ("" if changed else " (unchanged)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
