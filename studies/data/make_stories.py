"""Writes stories.parquet beside this file: 3,000 short stories from a small grammar, seeded, so
that studies/tinystories_like.yaml has a parquet corpus that ships with ablate under its licence.
TinyStories itself (roneneldan/TinyStories on the Hugging Face Hub) is the real thing; see
docs/data.md for pointing the same study at it."""

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

NAMES = ["Lily", "Tom", "Mia", "Ben", "Sam", "Anna", "Max", "Zoe", "Leo", "Ella"]
ANIMALS = ["cat", "dog", "bird", "frog", "bunny", "fox", "duck", "bear"]
PLACES = ["the park", "the garden", "the beach", "the forest", "the farm", "the lake", "school"]
THINGS = ["a red ball", "a big box", "a shiny stone", "a little boat", "a blue kite", "a soft hat"]
FEELINGS = ["happy", "sad", "scared", "proud", "sleepy", "excited"]


def story(rng: random.Random) -> str:
    name, friend = rng.sample(NAMES, 2)
    animal, place, thing = rng.choice(ANIMALS), rng.choice(PLACES), rng.choice(THINGS)
    first, last = rng.sample(FEELINGS, 2)
    lines = [
        f"Once upon a time, there was a little {rng.choice(['girl', 'boy'])} named {name}.",
        f"One day, {name} went to {place} with {friend}.",
        f"At {place}, they found {thing} next to a {animal}.",
        f'The {animal} looked {first}. {name} said, "Do not be {first}, little {animal}."',
        f"{friend} gave {thing} to the {animal}, and the {animal} was {last}.",
        f"{name} and {friend} played with the {animal} until the sun went down.",
        f"From that day on, the {animal} came to {place} every day to see them.",
    ]
    middle = sorted(rng.sample(range(1, len(lines) - 1), rng.randint(3, 5)))  # in the story's order
    keep = [lines[0], *(lines[i] for i in middle), lines[-1]]
    return " ".join(keep)


def main() -> None:
    rng = random.Random(0)
    texts = [story(rng) for _ in range(3000)]
    pq.write_table(pa.table({"text": texts}), Path(__file__).with_name("stories.parquet"), row_group_size=500)


if __name__ == "__main__":
    main()
