"""Writes the descriptor set of the SynthShapes classes (avalanche_convprompt/language/descriptors/data/synthetic.json).

A SynthShapes class is a (shape, fill pattern) pair, so its descriptors are the
shape's three visual attributes followed by the pattern's three; the text below
was written for this project. Classes that share a shape or a pattern share
descriptors, which is what the language-model allocation measures.

    python scripts/write_synthetic_descriptors.py
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from avalanche_convprompt.data import CLASS_NAMES, NUM_CLASSES, class_shape_pattern  # noqa: E402
from avalanche_convprompt.language.descriptors import load_descriptors, shipped_path  # noqa: E402
from avalanche_convprompt.runs.files import write_json  # noqa: E402

SHAPE_DESCRIPTORS = {
    "circle": ["round outline", "smooth curved edge with no corners", "same width in every direction"],
    "square": ["four equal straight sides", "four right-angle corners", "boxy outline"],
    "triangle": ["three straight sides", "three pointed corners", "wide base narrowing to a tip"],
    "star": ["five pointed arms", "spiky outline", "sharp notches between the points"],
    "cross": ["plus-sign outline", "two bars crossing at the centre", "four short equal arms"],
    "ring": ["hollow round band", "empty hole in the middle", "thick circular outline"],
    "diamond": ["rhombus standing on one corner", "four slanted sides", "pointed top and bottom"],
    "hexagon": ["six straight sides", "six blunt corners", "honeycomb-cell outline"],
    "crescent": ["curved moon shape", "one hollow and one bulging edge", "two pointed horns"],
    "arrow": ["pointed triangular head", "straight rectangular shaft", "points in one direction"],
}
PATTERN_DESCRIPTORS = {
    "solid": ["one flat uniform colour", "no texture inside", "plain even fill"],
    "hstripes": ["horizontal parallel stripes", "bands running from left to right", "striped texture"],
    "vstripes": ["vertical parallel stripes", "bands running from top to bottom", "striped texture"],
    "dstripes": ["diagonal parallel stripes", "slanted alternating bands", "striped texture"],
    "dots": ["regular grid of round dots", "spotted polka-dot fill", "small circles on a contrasting colour"],
    "checker": ["checkerboard of small squares", "alternating two-colour tiles", "chequered grid texture"],
    "gradient": ["smooth colour fade across the shape", "one side lighter than the other",
                 "soft blend without texture"],
    "speckle": ["random grainy speckles", "noisy sand-like texture", "irregular tiny flecks of colour"],
}


def main():
    classes = {}
    for cid in range(NUM_CLASSES):
        shape, pattern = class_shape_pattern(cid)
        classes[CLASS_NAMES[cid]] = {"name": CLASS_NAMES[cid],
                                     "descriptors": SHAPE_DESCRIPTORS[shape] + PATTERN_DESCRIPTORS[pattern]}
    path = str(shipped_path("synthetic"))
    write_json(path, {"dataset": "synthetic", "key": "SynthShapes class name (avalanche_convprompt.data)",
                      "source": "written for avalanche-convprompt",
                      "generated_by": "scripts/write_synthetic_descriptors.py",
                      "classes": classes})
    print(f"wrote {len(load_descriptors('synthetic'))} classes to {path}")


if __name__ == "__main__":
    main()
