"""Near-duplicate detection, so that train and eval splits share no near-copy of a text.

Two texts are compared by the Jaccard similarity of their shingle sets,
J(A, B) = |A ∩ B| / |A ∪ B|. A :class:`Shingling` makes the sets from normalized
text (lowercased; word shingles are n consecutive ``\\w+`` tokens, so punctuation and
markup such as code fences do not count; character shingles are n consecutive
characters of the whitespace-collapsed text). A text shorter than one shingle is its
own single shingle.

Similarities are exact, over all pairs: a binary item x shingle incidence matrix X
(scipy.sparse) gives every intersection at once as X·Yᵀ. For the few thousand short
texts of the embedded data that takes well under a second, so an approximate index
(MinHash LSH) would only add error and a dependency.

:func:`cluster` joins items whose similarity is at least a threshold (connected
components of that graph, so near-duplicates chain); :func:`assign_clusters` puts whole
clusters into train or eval.

Benign prompts are also compared by their *(trigger word, topic) pairs*. A trigger word
is any word form listed in :data:`TRIGGERS`, harm-associated words that benign prompts
use in a harmless sense, context or definition ("kill a process", "fireworks", "what is
arson?"), matched as whole words, case-insensitively. A prompt's topic is the domain
label written next to it (in :mod:`sstm.data.benign`), one of the closed list
:data:`TOPICS`; the label fixes the sense in which the prompt uses its trigger words
("kill" in ``computing`` ends a process, in ``garden`` a weed). A label and not the
prompt's other words, because two prompts on one topic need not share another word
("How do fireworks get their colours?", "What chemicals make fireworks glow green?");
the labels are coarse on purpose, as a coarser label makes more pairs collide. A
prompt's pairs are {(t, topic) : t a trigger word of the prompt}. The over-refusal eval
may use a trigger word that a benign training prompt used, but never in the same topic:
the eval then measures whether what the safety adapter learned from benign training rows
carries over to a trigger word's other senses and to unseen trigger words, not whether it
remembers one training prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence, TypeVar

from sstm.data.sources import stable_fraction

if TYPE_CHECKING:  # numpy and scipy are imported where used: `import sstm.data` stays fast
    import numpy as np
    import scipy.sparse as sp

WORD = re.compile(r"\w+")
T = TypeVar("T")


@dataclass(frozen=True)
class Shingling:
    """Shingles of `n` words (`unit="word"`) or `n` characters (`unit="char"`)."""

    unit: str
    n: int

    def __call__(self, text: str) -> frozenset[str]:
        if self.unit == "word":
            seq: Sequence[str] = WORD.findall(text.lower())
            join = " ".join
        else:
            seq = " ".join(text.lower().split())
            join = "".join
        if len(seq) <= self.n:
            return frozenset([join(seq)])
        return frozenset(join(seq[i:i + self.n]) for i in range(len(seq) - self.n + 1))

    def __str__(self) -> str:
        return f"{self.unit}-{self.n}"


def _incidence(sets: list[frozenset[str]], vocab: dict[str, int]) -> sp.csr_matrix:
    import numpy as np
    import scipy.sparse as sp

    rows = np.repeat(np.arange(len(sets)), [len(s) for s in sets])
    cols = np.fromiter((vocab.setdefault(g, len(vocab)) for s in sets for g in s), dtype=np.int64, count=len(rows))
    return sp.csr_matrix((np.ones(len(rows), dtype=np.int64), (rows, cols)))


def jaccard_matrix(a: Sequence[str], b: Sequence[str], shingling: Shingling) -> np.ndarray:
    """J[i, j] = Jaccard(shingles(a[i]), shingles(b[j])), exact, as a dense |a| x |b| array."""
    import numpy as np

    sa, sb = [shingling(t) for t in a], [shingling(t) for t in b]
    vocab: dict[str, int] = {}
    xa, xb = _incidence(sa, vocab), _incidence(sb, vocab)
    xa.resize(len(sa), len(vocab))
    xb.resize(len(sb), len(vocab))
    inter = (xa @ xb.T).toarray()
    size_a = np.array([len(s) for s in sa])[:, None]
    size_b = np.array([len(s) for s in sb])[None, :]
    return inter / (size_a + size_b - inter)


@dataclass(frozen=True)
class Nearest:
    """For each query: the largest similarity to any pool item, and that item's index."""

    score: np.ndarray
    index: np.ndarray

    def count(self, threshold: float) -> int:
        return int((self.score >= threshold).sum())


def nearest(queries: Sequence[str], pool: Sequence[str], shingling: Shingling) -> Nearest:
    j = jaccard_matrix(queries, pool, shingling)
    return Nearest(j.max(axis=1), j.argmax(axis=1))


def cluster(items: dict[str, str], shingling: Shingling, threshold: float,
            keys: dict[str, frozenset] | None = None) -> dict[str, str]:
    """id -> canonical id (the smallest id) of its cluster: connected components of the graph
    whose edges join items with Jaccard >= `threshold` (and, with `keys`, items whose key sets
    intersect). Independent of the order of `items`."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    ids = sorted(items)
    edges = jaccard_matrix([items[i] for i in ids], [items[i] for i in ids], shingling) >= threshold
    if keys is not None:
        x = _incidence([frozenset(map(repr, keys[i])) for i in ids], {})
        edges |= (x @ x.T).toarray() > 0
    adjacency = sp.csr_matrix(edges)
    _, label = connected_components(adjacency, directed=False)
    canonical: dict[int, str] = {}
    for i, lab in zip(ids, label):  # ids ascending: the first member seen is the smallest
        canonical.setdefault(int(lab), i)
    return {i: canonical[int(lab)] for i, lab in zip(ids, label)}


def assign_clusters(clusters: dict[str, str], salt: str, eval_fraction: float) -> dict[str, str]:
    """id -> 'train' | 'eval', whole clusters at a time.

    Clusters are visited in the order of a stable hash of their canonical id; each goes to
    eval if that keeps the eval share at most `eval_fraction` of all items, else to train.
    The eval count then falls short of round(eval_fraction * items) by less than the smallest
    cluster sent to train (so not at all when a singleton went there), and the result depends
    only on the clusters, not on the order of `clusters`.
    """
    members: dict[str, list[str]] = {}
    for i, c in clusters.items():
        members.setdefault(c, []).append(i)
    target = round(eval_fraction * len(clusters))
    split, n_eval = {}, 0
    for c in sorted(members, key=lambda c: (stable_fraction(c, salt), c)):
        side = "eval" if n_eval + len(members[c]) <= target else "train"
        n_eval += len(members[c]) if side == "eval" else 0
        split |= {i: side for i in members[c]}
    return split


# --------------------------------------------------------------------------- trigger words

# Harm-associated words a benign prompt may use in a harmless sense, context or definition.
# Each entry: the trigger's name -> the regex of its word forms (whole words, lowercase).
TRIGGERS: dict[str, str] = {
    "abort": r"abort(s|ed|ing)?",
    "arson": r"arson(ist|ists)?",
    "assassinate": r"assassinat(e|es|ed|ing|ion)",
    "attack": r"attack(s|ed|ing|er|ers)?",
    "axe": r"axe(s|d)?",
    "beat": r"beat(s|en|ing)?",
    "blade": r"blades?|box cutters?",
    "blow": r"blow(s|n|ing)?|blew",
    "bomb": r"bomb(s|ed|ing|er)?",
    "break": r"break(s|ing)?|broke(n)?",
    "bully": r"(cyber)?bull(y|ies|ied|ying)",
    "burn": r"burn(s|ed|t|ing)?",
    "butcher": r"butcher(s|ed|ing)?",
    "bypass": r"bypass(es|ed|ing)?",
    "capture": r"captur(e|es|ed|ing)",
    "chemical": r"chemicals?",
    "choke": r"chok(e|es|ed|ing)",
    "circumvent": r"circumvent(s|ed|ing)?",
    "coup": r"coups?",
    "crack": r"crack(s|ed|ing)?",
    "crush": r"crush(es|ed|ing)?",
    "demolish": r"demolish(es|ed|ing)?",
    "destroy": r"destroy(s|ed|ing)?",
    "detonate": r"detonat(e|es|ed|ing|ion)",
    "die": r"die(s|d)?|dying|death|deadly",
    "dispose": r"dispos(e|es|ed|ing|al)",
    "dox": r"dox(x)?(es|ed|ing)?",
    "drug": r"drugs?|medications?",
    "eliminate": r"eliminat(e|es|ed|ing)",
    "execute": r"execut(e|es|ed|ing|ion)",
    "explode": r"explo(de|des|ded|ding|sion|sions|sive|sives)|gunpowder",
    "exploit": r"exploit(s|ed|ing)?",
    "exterminate": r"extermina(te|tes|ted|ting|tion|tor)",
    "extort": r"extort(s|ed|ing|ion)?|blackmail(s|ed|ing)?",
    "fire": r"fire(s|d|arm|arms|work|works)?|firing",
    "flammable": r"(in)?flammable|gasoline",
    "fraud": r"fraud(s|ulent|ster|sters)?|ponzi|embezzl(e|es|ed|ing|ement)|counterfeit(s|ed|ing)?|insider trading",
    "genocide": r"genocid(e|es|al)|massacres?|ethnic cleansing",
    "get away with": r"get(ting)? away with",
    "get rid of": r"get(ting)? rid of",
    "hack": r"hack(s|ed|ing|er|ers)?",
    "hate crime": r"hate (crimes?|speech)",
    "hunt": r"hunt(s|ed|ing|er)?",
    "inject": r"inject(s|ed|ing|ion)?",
    "kill": r"kill(s|ed|ing|er|ers)?",
    "knife": r"knife|knives",
    "lock pick": r"lock ?pick(s|ing)?|pick(ing)? (a|the) lock",
    "malware": r"malware|ransomware|spyware|botnets?|trojans?",
    "murder": r"murder(s|ed|er|ers|ing|ous)?|manslaughter",
    "nuke": r"nuke(s|d)?|nuclear",
    "overdose": r"overdos(e|es|ed|ing)",
    "override": r"overrid(e|es|den|ing)",
    "perjury": r"perjur(y|e|ed)",
    "phish": r"phish(ing|er|ers)?",
    "piracy": r"pira(te|tes|cy)",
    "poach": r"poach(es|ed|ing|er|ers)?",
    "poison": r"poison(s|ed|ing|ous)?",
    "punch": r"punch(es|ed|ing)?|knockout",
    "purge": r"purg(e|es|ed|ing)",
    "rob": r"rob(s|bed|bing|bery|beries|ber|bers)?|thie(f|ves)|heists?",
    "sabotage": r"sabotag(e|es|ed|ing)",
    "scam": r"scam(s|med|mer|mers|ming)?",
    "self-harm": r"self-harm(s|ing)?|suicid(e|es|al)",
    "shoot": r"shoot(s|ing|er)?|shot",
    "slaughter": r"slaughter(s|ed|ing)?",
    "slavery": r"slave(s|ry)?",
    "slay": r"slay(s|ed|ing)?|slain",
    "smash": r"smash(es|ed|ing)?",
    "smoke": r"smok(e|es|ed|ing)",
    "snuff": r"snuff(s|ed|ing)?",
    "spy": r"spy|spies|spying|spied",
    "stab": r"stab(s|bed|bing)?",
    "stalk": r"stalk(s|ed|ing|er|ers)?",
    "steal": r"steal(s|ing)?|stole(n)?",
    "strangle": r"strangl(e|es|ed|ing)",
    "strip": r"strip(s|ped|ping)?",
    "take down": r"(take|takes|took|taking|taken) down",
    "terminate": r"terminat(e|es|ed|ing|ion)",
    "terror": r"terror(ism|ist|ists)?",
    "torture": r"tortur(e|es|ed|ing)",
    "trap": r"trap(s|ped|ping)?",
    "trigger": r"trigger(s|ed|ing)?",
    "vaccine": r"vaccin(e|es|ation|ations)",
    "venom": r"venom(s|ous)?",
    "war crime": r"war crimes?",
    "weapon": r"weapon(s|ry)?|guns?|missiles?|landmines?",
}
_TRIGGER_RES = {name: re.compile(rf"\b(?:{forms})\b") for name, forms in TRIGGERS.items()}


def triggers(text: str) -> frozenset[str]:
    """The names of the trigger words that occur in `text` (any listed form, case-insensitive)."""
    low = text.lower()
    return frozenset(name for name, rx in _TRIGGER_RES.items() if rx.search(low))


def shared(a: Sequence[T], b: Sequence[T], key: Callable[[T], frozenset]) -> list[tuple[T, T, frozenset]]:
    """(item of a, item of b, key(a) & key(b)) for every pair whose keys intersect."""
    kb = [(y, key(y)) for y in b]
    return [(x, y, kx & ky) for x in a for kx in [key(x)] for y, ky in kb if kx & ky]


def shared_triggers(a: Sequence[str], b: Sequence[str]) -> list[tuple[str, str, frozenset[str]]]:
    """(text of a, text of b, trigger words they share) for every pair sharing one."""
    return shared(a, b, triggers)


# --------------------------------------------------------------------------- topics

# The domain labels of benign prompts (see the module docstring): label -> what it covers.
TOPICS: dict[str, str] = {
    "animals": "pets, wildlife and their care",
    "arts": "photography, music, film making, theatre, writing, crafts",
    "computing": "software, computers, phones, the internet",
    "fiction": "the characters, plots and worlds of novels, plays, films, TV and comics",
    "food": "cooking, baking, drinks, the kitchen",
    "games": "board, card, word and video games, chess",
    "garden": "plants, lawns, weeds and garden pests",
    "health": "the body, medicine, fitness, personal care",
    "history": "past events and the people in them",
    "home": "household chores, cleaning, repairs, DIY, household pests, home safety",
    "language": "words, idioms, grammar, translation",
    "money": "personal finance, banking, markets",
    "science": "natural science and mathematics",
    "society": "law, politics, religion, social groups, public life",
    "sport": "sports and athletic training",
    "travel": "travel, transport, the outdoors, camping, hiking",
    "work": "jobs, careers, business, school and study",
}


def trigger_topics(item: tuple[str, str]) -> frozenset[tuple[str, str]]:
    """The (trigger word, topic) pairs of a (topic, text) item: {(t, topic) : t in triggers(text)}."""
    topic, text = item
    if topic not in TOPICS:
        raise ValueError(f"topic {topic!r} of {text[:40]!r}: not one of {', '.join(TOPICS)}")
    return frozenset((t, topic) for t in triggers(text))


def shared_trigger_topics(a: Sequence[tuple[str, str]], b: Sequence[tuple[str, str]]
                          ) -> list[tuple[tuple[str, str], tuple[str, str], frozenset[tuple[str, str]]]]:
    """(item of a, item of b, the (trigger word, topic) pairs they share) for every pair of (topic, text)
    items sharing one."""
    return shared(a, b, trigger_topics)
