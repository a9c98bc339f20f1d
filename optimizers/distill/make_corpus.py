"""The built-in distillation corpus, generated on this machine from what is installed (nothing
is downloaded, nothing is shipped): ``corpus.builtin_corpus`` runs :func:`build` at first use
and caches the result. Two sources only:

- sentences of the docstrings of this Python's standard library (parsed with ``ast``, never
  imported), cleaned (no code, markup or URLs), filtered by length, deduplicated, plus short
  lower-case fragments of some of them (search-query style);
- sentences this module composes from the small word lists below (questions, requests,
  everyday statements), so the corpus is not only technical prose.

Every line that also appears in ``minilm_validation.txt`` (case and punctuation ignored) is
dropped: the sentences fidelity is judged on are never trained on. The order is shuffled with a
fixed seed, so the same Python gives the same corpus.
"""

from __future__ import annotations

import ast
import random
import re
import sysconfig
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data"

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_BAD = re.compile(r"[`<>{}\[\]|\\=_*#@~^$%]|::|\.\.|https?:|www\.|\w\.\w+\(|\(\)|\.py\b|--|"
                  r"\b(?:e\.g|i\.e|etc|cf|vs)\.")
_SECTION = re.compile(r"(?:Args|Arguments|Returns?|Raises|Yields|Parameters|Examples?|"
                      r"Notes?|Attributes|Warning|See also|Todo)\s*:", re.I)
_WORD = re.compile(r"[A-Za-z][a-z]+")


def normalise(text: str) -> str:
    """Lower case, letters and digits only: how corpus and validation lines are compared."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def _docstrings(path: Path):
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError, RecursionError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                yield doc


def _clean_sentences(doc: str):
    for para in re.split(r"\n\s*\n", doc):
        lines = [ln.strip() for ln in para.splitlines()]
        if any(ln.startswith((">>>", "...", ":", "-", "*", "+", "|", "..")) for ln in lines):
            continue
        text = " ".join(lines)
        for s in _SENTENCE_END.split(text):
            s = s.strip()
            if not (30 <= len(s) <= 120) or not s[0].isupper() or s[-1] not in ".?!":
                continue
            if _BAD.search(s) or not s.isascii() or _SECTION.match(s):
                continue
            words = s.split()
            if len(words) < 5 or sum(bool(_WORD.fullmatch(w.strip(".,;:?!'\"()"))) for w in words
                                     ) < 0.8 * len(words):
                continue
            yield s


def doc_sentences(roots: list[Path]) -> list[str]:
    seen, out = set(), []
    for root in roots:
        for path in [root] if root.is_file() else sorted(root.rglob("*.py")):
            if "test" in path.parts or "tests" in path.parts:
                continue
            for doc in _docstrings(path):
                for s in _clean_sentences(doc):
                    key = normalise(s)
                    if key not in seen:
                        seen.add(key)
                        out.append(s)
    return out


# Word lists for composed sentences.
_PEOPLE = ["my neighbour", "the teacher", "our manager", "my sister", "the doctor", "a customer",
           "the new intern", "my grandfather", "the driver", "a journalist", "the nurse",
           "our team", "the landlord", "a friend of mine", "the mayor", "the chef", "my cousin",
           "the pilot", "a student", "the referee", "my boss", "the plumber", "our coach",
           "the librarian", "a tourist", "my aunt", "the engineer", "the baker"]
_THINGS = ["the printer", "the laptop", "the washing machine", "my phone", "the heating",
           "the car", "the router", "the dishwasher", "the front door lock", "my bike",
           "the coffee machine", "the kitchen tap", "the camera", "the headphones", "the oven",
           "the fridge", "my watch", "the vacuum cleaner", "the smoke alarm", "the keyboard"]
_PLACES = ["Madrid", "Oslo", "Kyoto", "Nairobi", "Toronto", "Prague", "Melbourne", "Lima",
           "Cairo", "Dublin", "Seoul", "Marseille", "Bergen", "Porto", "Krakow", "Denver",
           "Istanbul", "Hanoi", "Quebec", "Seville", "Zurich", "Accra", "Glasgow", "Osaka"]
_FOODS = ["lentil soup", "banana bread", "risotto", "pancakes", "a vegetable curry",
          "roast chicken", "sourdough", "a lemon tart", "fish tacos", "stuffed peppers",
          "apple crumble", "a mushroom pie", "fried rice", "a chickpea salad", "dumplings"]
_TOPICS = ["climate change", "ancient Rome", "the stock market", "photosynthesis",
           "the French revolution", "black holes", "jazz music", "vaccines", "volcanoes",
           "machine learning", "the printing press", "coral reefs", "inflation", "chess",
           "bird migration", "the human brain", "renewable energy", "the Silk Road",
           "quantum physics", "the history of football", "tax returns", "sleep"]
_TIMES = ["tomorrow", "next week", "on Monday", "this weekend", "in the morning",
          "after lunch", "before the holidays", "tonight", "at the end of the month",
          "on Thursday evening", "in two hours", "next spring", "right after the meeting"]
_ADJ = ["great", "terrible", "surprisingly good", "a bit slow", "very comfortable",
        "too expensive", "easy to use", "noisy", "beautifully made", "disappointing",
        "reliable", "confusing", "excellent value", "fragile", "much better than expected"]
_PRODUCTS = ["this jacket", "the blender", "these running shoes", "the new tablet",
             "this mattress", "the hotel room", "the delivery service", "this umbrella",
             "the rental car", "the app", "this backpack", "the cordless drill"]
_FEELINGS = ["tired", "excited", "nervous", "relieved", "bored", "happy", "worried",
             "grateful", "confused", "proud"]
_EVENTS = ["the concert", "the football match", "the book club", "the job interview",
           "the wedding", "the school play", "the marathon", "the conference",
           "the dentist appointment", "the team dinner", "the exam", "the street festival"]
_ORGS = ["the city council", "a local charity", "the central bank", "the university",
         "a small bakery", "the hospital", "the airline", "a software company",
         "the football club", "the national museum", "a car maker", "the school board"]
_ACTIONS = ["announced new opening hours", "cut its prices", "hired fifty new staff",
            "opened a second branch", "delayed the project", "published its annual report",
            "launched a recycling scheme", "raised its fees", "won a national award",
            "changed its logo", "closed for renovation", "doubled its budget"]
_SHORT = ["sounds good to me", "see you soon", "no worries at all", "good morning everyone",
          "happy birthday", "well done", "that makes sense", "not sure yet",
          "let me check and get back to you", "count me in", "sorry for the delay",
          "have a nice weekend", "I agree completely", "maybe next time", "on my way",
          "great job on the presentation", "take care", "any update on this",
          "cheers for the help", "just landed"]
_TEMPLATES = [
    "How do I fix {thing} when it stops working?",
    "Why does {thing} make a strange noise {time}?",
    "{Person} said the meeting would move to {time}.",
    "Can you explain {topic} in simple terms?",
    "What is the best way to learn about {topic}?",
    "We are flying to {place} {time} for a short holiday.",
    "Is it expensive to rent a flat in {place}?",
    "{Person} cooked {food} for the whole family.",
    "How long should I bake {food}?",
    "The flight from {place} to {place2} was cancelled because of fog.",
    "{Person} is writing a book about {topic}.",
    "I need to return {thing}, it broke after two days.",
    "Please remind me to call {person} {time}.",
    "The documentary about {topic} won several awards.",
    "Prices in {place} rose sharply over the last year.",
    "{Person} recommended a small restaurant in {place} that serves {food}.",
    "There will be road works near the station {time}.",
    "{Person} fixed {thing} with a screwdriver and some patience.",
    "Does anyone know a good introduction to {topic}?",
    "Honestly, {product} is {adj}.",
    "I bought {product} last month and it is {adj}.",
    "Would you recommend {product} to a friend?",
    "{Product} arrived late, but it is {adj}.",
    "I feel {feeling} about {event} {time}.",
    "{Person} was {feeling} after {event}.",
    "Are you coming to {event} {time}?",
    "{Event} was moved to {time} because of the weather.",
    "{Org} {action}.",
    "Yesterday {org} {action}, according to a spokesperson.",
    "Reports say {org} {action} after months of talks.",
    "what time does {event} start",
    "{food} recipe without an oven",
    "cheap hotels in {place} {time}",
    "how to clean {thing}",
    "{topic} explained for beginners",
    "is {product} worth it",
    "{short}",
    "{short}, {person_lower} says",
    "Thanks a lot, {short}!",
    "Do I need a visa to visit {place}?",
    "The weather in {place} will be cold and windy {time}.",
    "My train to {place} is running twenty minutes late.",
    "Could you send me the slides from {event}?",
    "{Person} has been learning about {topic} for a year.",
    "Is it normal to feel {feeling} before {event}?",
    "The museum in {place} has a new exhibition on {topic}.",
    "I left {thing} on overnight and now it will not turn on.",
    "Which is healthier, {food} or {food2}?",
    "{Person} brought {food} to {event}.",
    "We should book a table for {event} {time}.",
]


def composed_sentences(n: int, rng: random.Random) -> list[str]:
    out, seen = [], set()
    for _ in range(n * 20):
        if len(out) >= n:
            break
        t = rng.choice(_TEMPLATES)
        person = rng.choice(_PEOPLE)
        p1, p2 = rng.sample(_PLACES, 2)
        f1, f2 = rng.sample(_FOODS, 2)
        product, event, org = rng.choice(_PRODUCTS), rng.choice(_EVENTS), rng.choice(_ORGS)
        s = t.format(person=person, Person=person[0].upper() + person[1:], person_lower=person,
                     thing=rng.choice(_THINGS), place=p1, place2=p2, food=f1, food2=f2,
                     topic=rng.choice(_TOPICS), time=rng.choice(_TIMES), adj=rng.choice(_ADJ),
                     product=product, Product=product[0].upper() + product[1:],
                     feeling=rng.choice(_FEELINGS), event=event,
                     Event=event[0].upper() + event[1:], org=org, Org=org[0].upper() + org[1:],
                     action=rng.choice(_ACTIONS), short=rng.choice(_SHORT))
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def query_fragments(sentences: list[str], n: int, rng: random.Random) -> list[str]:
    out = []
    for s in rng.sample(sentences, min(n, len(sentences))):
        words = normalise(s).split()
        k = rng.randint(2, 6)
        start = rng.randint(0, max(0, len(words) - k))
        out.append(" ".join(words[start:start + k]))
    return out


def build(n_docs: int = 3000, n_composed: int = 2000, n_queries: int = 600, seed: int = 0
          ) -> list[str]:
    rng = random.Random(seed)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    roots = [p for p in sorted(stdlib.iterdir()) if p.name != "site-packages"
             and (p.suffix == ".py" or p.is_dir())]
    docs = doc_sentences(roots)
    rng.shuffle(docs)
    docs = docs[:n_docs]
    lines = docs + composed_sentences(n_composed, rng) + query_fragments(docs, n_queries, rng)
    held_out = {normalise(t) for t in (DATA / "minilm_validation.txt").read_text().splitlines()}
    seen, out = set(), []
    for s in lines:
        key = normalise(s)
        if key and key not in held_out and key not in seen:
            seen.add(key)
            out.append(s)
    rng.shuffle(out)
    return out
