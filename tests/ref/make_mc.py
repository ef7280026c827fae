#!/usr/bin/env python3
"""Generates tests/data/mc_general.jsonl: a small, deterministic multiple-choice set for
the engine's mc_accuracy metric (issue 4) — easy general knowledge, arithmetic,
opposites and plurals, which a 135M-parameter model gets partly right, so the metric
separates a working engine (well above the 25% of chance) from a broken one and
different weight types of one model from each other.

Each line: {"context": "...", "choices": [" a", " b", " c", " d"], "answer": i}.
Choices begin with a space: they are continuations of the context, as
lm-evaluation-harness scores them (log-likelihood of the choice's tokens after the
context's). The correct choice's position is fixed by the SHA-256 of the context, so
the file is the same on every run and the answers are spread over the positions.

usage: make_mc.py [OUT.jsonl]     (default tests/data/mc_general.jsonl)
"""
import hashlib
import json
import os
import sys

# (context, correct, [three distractors])
GENERAL = [
    ("The capital of France is", "Paris", ["London", "Berlin", "Madrid"]),
    ("The capital of Japan is", "Tokyo", ["Beijing", "Seoul", "Bangkok"]),
    ("The capital of Italy is", "Rome", ["Vienna", "Athens", "Lisbon"]),
    ("The capital of Germany is", "Berlin", ["Paris", "Warsaw", "Prague"]),
    ("The capital of Spain is", "Madrid", ["Rome", "Dublin", "Oslo"]),
    ("The capital of Russia is", "Moscow", ["Kyiv", "Helsinki", "Budapest"]),
    ("The capital of Egypt is", "Cairo", ["Nairobi", "Lagos", "Tunis"]),
    ("The Eiffel Tower is in the city of", "Paris", ["London", "Tokyo", "Sydney"]),
    ("The largest planet in our solar system is", "Jupiter", ["Mercury", "Mars", "Venus"]),
    ("The Earth moves around the", "Sun", ["Moon", "river", "mountain"]),
    ("On a clear day, the color of the sky is", "blue", ["green", "red", "brown"]),
    ("Fresh grass is usually the color", "green", ["purple", "black", "orange"]),
    ("Fresh snow is usually the color", "white", ["black", "green", "red"]),
    ("A baby cat is called a", "kitten", ["puppy", "calf", "foal"]),
    ("A baby dog is called a", "puppy", ["kitten", "lamb", "chick"]),
    ("Bees make", "honey", ["milk", "wool", "glass"]),
    ("The animal known as the king of the jungle is the", "lion", ["mouse", "rabbit", "frog"]),
    ("The tallest animal in the world is the", "giraffe", ["mouse", "rabbit", "snail"]),
    ("A spider has eight", "legs", ["wheels", "wings", "windows"]),
    ("There are seven days in a", "week", ["year", "second", "century"]),
    ("There are twelve months in a", "year", ["day", "minute", "week"]),
    ("The first month of the year is", "January", ["October", "June", "August"]),
    ("The day after Monday is", "Tuesday", ["Sunday", "Friday", "Saturday"]),
    ("The day before Friday is", "Thursday", ["Monday", "Sunday", "Tuesday"]),
    ("Fish live in", "water", ["sand", "fire", "clouds"]),
    ("Ice is frozen", "water", ["bread", "metal", "wood"]),
    ("When you are thirsty, you drink", "water", ["sand", "stones", "paper"]),
    ("A doctor usually works in a", "hospital", ["bakery", "garage", "circus"]),
    ("To see in the dark, you turn on a", "light", ["shoe", "spoon", "carpet"]),
    ("The opposite of north is", "south", ["east", "up", "left"]),
    ("Humans breathe in", "oxygen", ["sand", "gold", "sugar"]),
    ("A triangle has three", "sides", ["wheels", "tails", "doors"]),
]

# a op b: context "Question: What is a plus b?\nAnswer:"
ARITHMETIC = [
    (2, "+", 3), (4, "+", 4), (5, "+", 2), (7, "+", 1), (3, "+", 6), (10, "+", 10),
    (9, "-", 4), (8, "-", 3), (6, "-", 1), (10, "-", 5),
    (2, "*", 3), (3, "*", 3), (5, "*", 2), (4, "*", 10), (6, "*", 2),
]

OPPOSITES = [
    ("hot", "cold", ["warm", "red", "fast"]),
    ("big", "small", ["huge", "blue", "loud"]),
    ("up", "down", ["over", "green", "high"]),
    ("day", "night", ["morning", "week", "table"]),
    ("fast", "slow", ["quick", "tall", "happy"]),
    ("happy", "sad", ["glad", "green", "early"]),
    ("open", "closed", ["wide", "yellow", "soft"]),
    ("black", "white", ["dark", "tall", "heavy"]),
    ("old", "young", ["ancient", "round", "wet"]),
    ("wet", "dry", ["damp", "loud", "early"]),
    ("tall", "short", ["high", "angry", "sweet"]),
    ("early", "late", ["soon", "blue", "soft"]),
    ("left", "right", ["down", "green", "heavy"]),
    ("heavy", "light", ["big", "sad", "round"]),
    ("full", "empty", ["whole", "red", "tall"]),
]

PLURALS = [
    ("cat", "cats", ["cates", "caten", "catii"]),
    ("dog", "dogs", ["doges", "dogen", "dogi"]),
    ("box", "boxes", ["boxs", "boxen", "boxi"]),
    ("city", "cities", ["citys", "cityes", "citen"]),
    ("child", "children", ["childs", "childes", "childi"]),
    ("mouse", "mice", ["mouses", "mousen", "meese"]),
    ("man", "men", ["mans", "manes", "mannen"]),
    ("woman", "women", ["womans", "womanes", "womanen"]),
    ("foot", "feet", ["foots", "footes", "footen"]),
    ("tooth", "teeth", ["tooths", "toothes", "toothen"]),
    ("goose", "geese", ["gooses", "goosen", "goosi"]),
    ("person", "people", ["persones", "personen", "personi"]),
    ("leaf", "leaves", ["leafs", "leafen", "leafes"]),
    ("knife", "knives", ["knifes", "knifen", "knifi"]),
    ("baby", "babies", ["babys", "babyes", "babyen"]),
]


def place(context, correct, distractors):
    """The four choices (each with a leading space) and the index of the correct one."""
    k = int(hashlib.sha256(context.encode()).hexdigest(), 16) % (len(distractors) + 1)
    choices = [" " + d for d in distractors]
    choices.insert(k, " " + correct)
    return choices, k


def questions():
    out = []
    for ctx, good, bad in GENERAL:
        out.append((ctx, good, bad))
    for a, op, b in ARITHMETIC:
        word = {"+": "plus", "-": "minus", "*": "times"}[op]
        val = {"+": a + b, "-": a - b, "*": a * b}[op]
        bad = [str(v) for v in (val + 1, val - 1 if val > 1 else val + 3, val + 2)]
        out.append((f"Question: What is {a} {word} {b}?\nAnswer:", str(val), bad))
    for w, good, bad in OPPOSITES:
        out.append((f"The opposite of {w} is", good, bad))
    for w, good, bad in PLURALS:
        out.append((f"The plural of {w} is", good, bad))
    lines = []
    for ctx, good, bad in out:
        choices, k = place(ctx, good, bad)
        assert len(set(choices)) == len(choices), ctx
        lines.append(json.dumps({"context": ctx, "choices": choices, "answer": k},
                                ensure_ascii=False))
    return lines


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "data",
                                                              "mc_general.jsonl")
    lines = questions()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(f"{os.path.normpath(path)}: {len(lines)} questions")


if __name__ == "__main__":
    main()
