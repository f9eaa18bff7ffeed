"""Utility data: document-grounded question answering (RepliQA and a RepliQA-style generator).

Sources (see :mod:`sstm.data.sources`): ``ServiceNow/repliqa`` or a local dataset
directory through ``datasets``; a local parquet/JSONL/CSV with RepliQA's columns
(``document_extracted, question, answer``, optional ``document_id``); or, by default,
an embedded deterministic generator.

The generator writes short reports about fictional companies, towns, people,
festivals and policies. Each entity kind has a pool of facts; a document states a
random subset of them (random values, random phrasings, random order, plus filler
sentences), and its five questions ask about stated facts or -- for about 20 % --
about facts of the pool the document does *not* state, whose gold answer is
RepliQA's "The answer is not found in the document." Answers therefore live only in
the document: the same question shape is answerable in one document and not in
another, and every value is drawn afresh.

Rows: ``prompt`` = question, ``context`` = document, ``response`` = answer,
``answerable`` (bool), ``doc_id``; generated rows also carry ``kind`` and ``fact``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from sstm.data.rows import register_rows
from sstm.data.files import read_table
from sstm.data.sources import (check_n, check_split, file_sha256, kind_of, load_hub, missing_columns,
                               short_hash, split_of, subsample)
from sstm.errors import SSTMError
from sstm.registry import Artifact, Registry

GENERATOR = "repliqa-style-v1"
UNANSWERABLE = "The answer is not found in the document."
QUESTIONS_PER_DOC = 5
UNANSWERABLE_RATE = 0.2
# "calib": the calibration part `sstm search` tunes on (ROUGE-L); its documents come from a random stream of
# their own, so no calibration document is a test ("eval") document (tests/test_search.py checks it).
DEFAULT_N = {"train": 1000, "calib": 100, "eval": 200}
REPLIQA_COLUMNS = ["document_extracted", "question", "answer"]

# --------------------------------------------------------------------------- name material

_SYL = ("ka ve lo mar tis dun ore bel qua rin sa tho vik zen al dor fen gal hy iso jor kel lum nar pe "
        "ros sil tam ur wen yar bra cor del esk fra gri hol ist lev mo nes pra sto tel vun").split()
_FIRST = ("Amara Bastien Chiara Dmitri Elif Farid Greta Hiroshi Ines Jonas Kalani Leona Mateo Nadia Oskar "
          "Priya Quentin Rosa Soren Talia Umberto Valentina Wendell Ximena Yusuf Zofia Anders Beatriz "
          "Cyrus Delphine Emeka Freya Gideon Halima Ivo Juno Kasimir Lucia Marek Noor").split()
_SURNAME_END = ("ov son ez ari berg ski ton elli ard ine ström ak ura").split()
_PLACE_END = ("ford vik ona burg ville stad mere haven dale port wick field").split()
_COMPANY_END = ("Labs", "Systems", "Cooperative", "Holdings", "Works", "Instruments", "Foods", "Robotics",
                "Textiles", "Energy")
_PRODUCTS = ("solar water pumps", "modular bicycle frames", "biodegradable packaging", "hearing-aid batteries",
             "greenhouse sensors", "ceramic water filters", "cargo drones", "wool insulation panels",
             "seaweed snacks", "language-learning tablets", "electric ferry engines", "smart beehives")
_FIELDS = ("marine biology", "glass sculpture", "urban planning", "choral composition", "soil chemistry",
           "children's literature", "bridge engineering", "documentary photography", "astronomy",
           "textile design")
_WORKS = ("The Salt Orchard", "Tides of Copper", "A Map of Quiet Rooms", "The Lantern Index", "Northbound Hours",
          "Glass Weather", "The Ninth Harbor", "Paper Rivers", "Songs for a Dry Year", "The Orchard Ledger")
_MONTHS = ("January February March April May June July August September October November December").split()
_THEMES = ("coastal restoration", "street food", "independent film", "early music", "robotics for schools",
           "folk dance", "night-sky photography", "sustainable fashion", "jazz improvisation", "rare seeds")
_INDUSTRIES = ("fishing", "glassmaking", "dairy farming", "shipbuilding", "software", "wine production",
               "tourism", "textile weaving", "copper mining", "furniture making")
_LANDMARKS = ("bridge", "lighthouse", "clock tower", "botanical garden", "covered market", "observatory",
              "stone aqueduct", "opera house")
_GOALS = ("cut household waste", "reduce car traffic in the centre", "lower water consumption",
          "increase tree cover", "cut public-building energy use", "reduce noise at night")


def _word(rng: random.Random, lo: int = 2, hi: int = 3) -> str:
    return "".join(rng.choice(_SYL) for _ in range(rng.randint(lo, hi))).capitalize()


def _person(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST)} {_word(rng, 1, 2)}{rng.choice(_SURNAME_END)}"


def _place(rng: random.Random) -> str:
    return f"{_word(rng, 1, 2)}{rng.choice(_PLACE_END)}"


def _money(rng: random.Random) -> str:
    return f"{rng.randint(2, 95)}.{rng.randint(1, 9)} million {rng.choice(['euros', 'dollars', 'crowns'])}"


# --------------------------------------------------------------------------- fact specs


@dataclass(frozen=True)
class Fact:
    """One fact an entity may have: how a document states it, how it is asked, how it is answered."""

    key: str
    sentences: tuple[str, ...]
    questions: tuple[str, ...]
    answer: str


@dataclass(frozen=True)
class DocumentKind:
    """One kind of generated document (company, town, ...): its titles, openings, values, facts and fillers."""

    name: str
    title: tuple[str, ...]
    intro: tuple[str, ...]
    values: Callable[[random.Random], dict]
    facts: tuple[Fact, ...]
    fillers: tuple[str, ...]


def _company_values(rng):
    return {"name": f"{_word(rng)} {rng.choice(_COMPANY_END)}", "founded": rng.randint(1890, 2018),
            "founder": _person(rng), "hq": _place(rng), "product": rng.choice(_PRODUCTS),
            "employees": rng.randint(12, 9800), "ceo": _person(rng), "region": f"the {_word(rng)} region",
            "partner": f"{_word(rng)} {rng.choice(_COMPANY_END)}", "revenue": _money(rng),
            "plant": _place(rng), "plant_year": rng.randint(1995, 2023), "share": rng.randint(8, 64)}


COMPANY = DocumentKind(
    "company",
    ("{name}: a company profile", "Inside {name}", "Business report: {name}"),
    ("This report describes {name}.", "{name} is a privately held firm.", "Few outside the trade know {name} well."),
    _company_values,
    (
        Fact("founded", ("{name} was founded in {founded}.", "The firm traces its origins to {founded}."),
             ("In what year was {name} founded?", "When was {name} established?"), "{name} was founded in {founded}."),
        Fact("founder", ("It was started by the engineer {founder}.", "Its founder, {founder}, began in a rented garage."),
             ("Who founded {name}?", "Who started {name}?"), "{name} was founded by {founder}."),
        Fact("hq", ("Its headquarters are in {hq}.", "The company is based in the town of {hq}."),
             ("Where is {name} headquartered?", "In which town is {name} based?"), "{name} is headquartered in {hq}."),
        Fact("product", ("Its best-known products are {product}.", "Most of its income comes from {product}."),
             ("What is {name} best known for making?", "Which products does {name} mainly sell?"),
             "{name} is best known for {product}."),
        Fact("employees", ("It employs {employees} people.", "The workforce numbers {employees} employees."),
             ("How many people does {name} employ?", "What is the size of {name}'s workforce?"),
             "{name} employs {employees} people."),
        Fact("ceo", ("The current chief executive is {ceo}.", "{ceo} has led the company as CEO since the last reorganisation."),
             ("Who is the chief executive of {name}?", "Who leads {name} as CEO?"), "The CEO of {name} is {ceo}."),
        Fact("region", ("Most customers are in {region}.", "The firm sells mainly in {region}."),
             ("Where are most of {name}'s customers?", "In which region does {name} sell most?"),
             "Most of {name}'s customers are in {region}."),
        Fact("partner", ("It has a long-standing partnership with {partner}.", "{partner} is its main supply partner."),
             ("Which company is {name}'s main partner?", "Who does {name} partner with?"),
             "{name}'s main partner is {partner}."),
        Fact("revenue", ("Last year it reported revenue of {revenue}.", "Annual revenue reached {revenue}."),
             ("What revenue did {name} report last year?", "How much revenue did {name} make last year?"),
             "{name} reported revenue of {revenue}."),
        Fact("plant", ("In {plant_year} it opened a second plant in {plant}.", "A second factory in {plant} opened in {plant_year}."),
             ("Where did {name} open its second plant?", "In which town is {name}'s second factory?"),
             "{name} opened its second plant in {plant} in {plant_year}."),
        Fact("share", ("About {share} percent of its output is exported.", "Exports account for roughly {share} percent of sales."),
             ("What share of {name}'s output is exported?", "What percentage of {name}'s sales come from exports?"),
             "About {share} percent of {name}'s output is exported."),
    ),
    ("Analysts describe the sector as crowded but stable.", "The company rarely gives interviews.",
     "Competition from larger firms has grown in recent years.", "Its offices are known for an open floor plan.",
     "Industry observers expect modest growth next year."),
)


def _town_values(rng):
    return {"name": _place(rng), "region": f"{_word(rng)} Province", "population": rng.randint(800, 240000),
            "founded": rng.randint(1100, 1900), "mayor": _person(rng),
            "landmark": f"the {_word(rng)} {rng.choice(_LANDMARKS)}", "river": f"the {_word(rng)} River",
            "industry": rng.choice(_INDUSTRIES), "month": rng.choice(_MONTHS), "twin": _place(rng),
            "elevation": rng.randint(3, 2400), "school": f"the {_word(rng)} Institute"}


TOWN = DocumentKind(
    "town",
    ("{name}: a town guide", "A visit to {name}", "{name} at a glance"),
    ("{name} is a town in {region}.", "This guide introduces {name}, in {region}.", "{name} lies in {region}."),
    _town_values,
    (
        Fact("population", ("It has {population} inhabitants.", "The population stands at {population}."),
             ("What is the population of {name}?", "How many people live in {name}?"), "{name} has {population} inhabitants."),
        Fact("founded", ("The town was founded in {founded}.", "Records first mention a settlement here in {founded}."),
             ("When was {name} founded?", "In what year was {name} first recorded?"), "{name} was founded in {founded}."),
        Fact("mayor", ("Its mayor is {mayor}.", "{mayor} was elected mayor at the last election."),
             ("Who is the mayor of {name}?", "Who was elected mayor of {name}?"), "The mayor of {name} is {mayor}."),
        Fact("landmark", ("Its most visited sight is {landmark}.", "Visitors come mainly to see {landmark}."),
             ("What is {name}'s most visited sight?", "Which landmark draws most visitors to {name}?"),
             "{name}'s most visited sight is {landmark}."),
        Fact("river", ("{river} runs through the old quarter.", "The town grew up along {river}."),
             ("Which river runs through {name}?", "Along which river did {name} grow?"), "{river} runs through {name}."),
        Fact("industry", ("The local economy rests on {industry}.", "Most jobs are in {industry}."),
             ("What is the main industry of {name}?", "Which industry provides most jobs in {name}?"),
             "The main industry of {name} is {industry}."),
        Fact("festival", ("A harvest festival is held every {month}.", "Each {month} the town holds its harvest festival."),
             ("In which month is {name}'s harvest festival held?", "When does {name} hold its harvest festival?"),
             "{name}'s harvest festival is held in {month}."),
        Fact("twin", ("It is twinned with {twin}.", "Its twin town is {twin}."),
             ("Which town is {name} twinned with?", "What is the twin town of {name}?"), "{name} is twinned with {twin}."),
        Fact("elevation", ("The centre sits {elevation} metres above sea level.", "Its elevation is {elevation} metres."),
             ("At what elevation does {name} lie?", "How high above sea level is {name}?"),
             "{name} lies {elevation} metres above sea level."),
        Fact("school", ("Higher education is offered by {school}.", "{school} trains many of the region's teachers."),
             ("Which institution offers higher education in {name}?", "What is the name of {name}'s college?"),
             "Higher education in {name} is offered by {school}."),
    ),
    ("The streets are narrow and mostly paved with stone.", "Summers are mild and winters wet.",
     "Cafes line the main square.", "Bus connections to the capital are frequent.",
     "Residents describe the atmosphere as quiet."),
)


def _person_values(rng):
    year = rng.randint(1900, 1995)
    return {"name": _person(rng), "born": year, "birthplace": _place(rng), "field": rng.choice(_FIELDS),
            "work": rng.choice(_WORKS), "award": f"the {_word(rng)} Medal", "award_year": year + rng.randint(25, 45),
            "mentor": _person(rng), "institution": f"the University of {_place(rng)}",
            "languages": rng.randint(2, 6), "first_year": year + rng.randint(18, 30)}


PERSON = DocumentKind(
    "person",
    ("Profile: {name}", "{name}, a life in work", "Who is {name}?"),
    ("{name} is known well beyond their home region.", "This profile looks at the career of {name}.",
     "{name} rarely speaks about their private life."),
    _person_values,
    (
        Fact("born", ("{name} was born in {born}.", "Born in {born}, {name} grew up in a large family."),
             ("In what year was {name} born?", "When was {name} born?"), "{name} was born in {born}."),
        Fact("birthplace", ("Their hometown is {birthplace}.", "{name} was raised in {birthplace}."),
             ("Where did {name} grow up?", "What is {name}'s hometown?"), "{name} grew up in {birthplace}."),
        Fact("field", ("{name} works in {field}.", "Their career has been devoted to {field}."),
             ("What field does {name} work in?", "To which field has {name} devoted their career?"),
             "{name} works in {field}."),
        Fact("work", ("Their best-known work is {work}.", "{work} made {name} widely known."),
             ("What is {name}'s best-known work?", "Which work made {name} famous?"), "{name}'s best-known work is {work}."),
        Fact("award", ("In {award_year} {name} received {award}.", "{award} was awarded to {name} in {award_year}."),
             ("Which award did {name} receive?", "What prize was {name} given?"),
             "{name} received {award} in {award_year}."),
        Fact("mentor", ("Early on, {name} trained under {mentor}.", "{mentor} was an important mentor."),
             ("Who mentored {name}?", "Under whom did {name} train?"), "{name} trained under {mentor}."),
        Fact("institution", ("{name} teaches at {institution}.", "They hold a post at {institution}."),
             ("Where does {name} teach?", "At which institution does {name} hold a post?"),
             "{name} teaches at {institution}."),
        Fact("languages", ("{name} speaks {languages} languages.", "They are fluent in {languages} languages."),
             ("How many languages does {name} speak?", "In how many languages is {name} fluent?"),
             "{name} speaks {languages} languages."),
        Fact("first", ("Their first public work appeared in {first_year}.", "{name} debuted publicly in {first_year}."),
             ("When did {name}'s first public work appear?", "In what year did {name} debut?"),
             "{name}'s first public work appeared in {first_year}."),
    ),
    ("Colleagues describe a patient and exacting style.", "Much of the work is done early in the morning.",
     "Critics have not always been kind.", "Interviews are rare and usually short.",
     "Students often mention long walks during lessons."),
)


def _festival_values(rng):
    return {"name": f"the {_word(rng)} {rng.choice(['Festival', 'Fair', 'Gathering', 'Week'])}",
            "city": _place(rng), "first": rng.randint(1950, 2019), "attendance": rng.randint(900, 180000),
            "organizer": f"the {_word(rng)} Foundation", "theme": rng.choice(_THEMES), "days": rng.randint(2, 12),
            "venue": f"{_word(rng)} Park", "month": rng.choice(_MONTHS), "price": rng.randint(5, 240),
            "director": _person(rng)}


FESTIVAL = DocumentKind(
    "festival",
    ("{Name}: event report", "What happened at {name}", "Report on {name}"),
    ("This report covers {name}.", "{Name} returned this year.", "{Name} is a yearly event."),
    _festival_values,
    (
        Fact("city", ("It takes place in {city}.", "The host city is {city}."),
             ("Where does {name} take place?", "Which city hosts {name}?"), "{Name} takes place in {city}."),
        Fact("first", ("It was first held in {first}.", "The first edition dates from {first}."),
             ("When was {name} first held?", "In what year was the first edition of {name}?"),
             "{Name} was first held in {first}."),
        Fact("attendance", ("This year it drew {attendance} visitors.", "Organisers counted {attendance} visitors."),
             ("How many visitors attended {name} this year?", "What was this year's attendance at {name}?"),
             "{Name} drew {attendance} visitors this year."),
        Fact("organizer", ("It is organised by {organizer}.", "{organizer} runs the event."),
             ("Who organises {name}?", "Which organisation runs {name}?"), "{Name} is organised by {organizer}."),
        Fact("theme", ("This edition was devoted to {theme}.", "The theme was {theme}."),
             ("What was the theme of this year's {name}?", "To what was this edition of {name} devoted?"),
             "This year's theme was {theme}."),
        Fact("days", ("The programme lasted {days} days.", "It ran for {days} days."),
             ("How many days did {name} last?", "For how long did {name} run?"), "{Name} lasted {days} days."),
        Fact("venue", ("Most events were held in {venue}.", "The main stage stood in {venue}."),
             ("Where was the main stage of {name}?", "In which park were most events of {name} held?"),
             "The main stage of {name} was in {venue}."),
        Fact("month", ("It is held every {month}.", "The event always falls in {month}."),
             ("In which month is {name} held?", "When in the year does {name} take place?"),
             "{Name} is held in {month}."),
        Fact("price", ("A day ticket cost {price} euros.", "Day passes were sold for {price} euros."),
             ("How much did a day ticket for {name} cost?", "What was the price of a day pass to {name}?"),
             "A day ticket cost {price} euros."),
        Fact("director", ("The artistic director is {director}.", "{director} directs the programme."),
             ("Who is the artistic director of {name}?", "Who directs the programme of {name}?"),
             "The artistic director of {name} is {director}."),
    ),
    ("The weather held for most of the week.", "Local hotels were fully booked.",
     "Volunteers helped with setup and cleaning.", "Several workshops sold out within hours.",
     "Food stalls offered regional dishes."),
)


def _policy_values(rng):
    town = _place(rng)
    return {"name": f"the {_word(rng)} {rng.choice(['Act', 'Initiative', 'Plan', 'Ordinance'])}",
            "authority": f"the {town} City Council", "start": f"{rng.choice(_MONTHS)} {rng.randint(2015, 2026)}",
            "goal": rng.choice(_GOALS), "percent": rng.randint(5, 60), "budget": _money(rng),
            "official": _person(rng), "review": rng.randint(2027, 2035), "fine": rng.randint(50, 5000),
            "threshold": rng.randint(5, 250)}


POLICY = DocumentKind(
    "policy",
    ("{Name} explained", "Policy brief: {name}", "What {name} changes"),
    ("This brief summarises {name}.", "{Name} has been the subject of debate.", "{Name} is a local policy."),
    _policy_values,
    (
        Fact("authority", ("It was adopted by {authority}.", "{authority} passed it after a long debate."),
             ("Who adopted {name}?", "Which body passed {name}?"), "{Name} was adopted by {authority}."),
        Fact("start", ("It took effect in {start}.", "The rules apply from {start}."),
             ("When did {name} take effect?", "From when do the rules of {name} apply?"), "{Name} took effect in {start}."),
        Fact("goal", ("Its aim is to {goal} by {percent} percent.", "The target is to {goal} by {percent} percent."),
             ("What is the target of {name}?", "What does {name} aim to achieve?"),
             "{Name} aims to {goal} by {percent} percent."),
        Fact("budget", ("Its budget is {budget}.", "Funding of {budget} was set aside."),
             ("What is the budget of {name}?", "How much funding was set aside for {name}?"),
             "The budget of {name} is {budget}."),
        Fact("official", ("{official} is responsible for carrying it out.", "Implementation is led by {official}."),
             ("Who is responsible for implementing {name}?", "Who leads the implementation of {name}?"),
             "{official} is responsible for implementing {name}."),
        Fact("review", ("It will be reviewed in {review}.", "A formal review is scheduled for {review}."),
             ("When will {name} be reviewed?", "In what year is the review of {name} scheduled?"),
             "{Name} will be reviewed in {review}."),
        Fact("fine", ("Breaches can be fined up to {fine} euros.", "The maximum fine is {fine} euros."),
             ("What is the maximum fine under {name}?", "How large can fines under {name} be?"),
             "The maximum fine under {name} is {fine} euros."),
        Fact("threshold", ("It applies to businesses with more than {threshold} employees.",
                           "Only firms employing over {threshold} people are covered."),
             ("Which businesses does {name} apply to?", "How many employees must a firm have to be covered by {name}?"),
             "{Name} applies to businesses with more than {threshold} employees."),
    ),
    ("Opposition parties criticised the timeline.", "A public consultation collected comments.",
     "Similar rules exist in neighbouring regions.", "Business groups asked for more guidance.",
     "Supporters call it overdue."),
)

DOCUMENT_KINDS = (COMPANY, TOWN, PERSON, FESTIVAL, POLICY)


def _fmt(template: str, values: dict) -> str:
    name = values["name"]
    return template.format(**values, Name=name[0].upper() + name[1:])


def _sentence_start(s: str) -> str:
    return s[0].upper() + s[1:]


def generate_document(rng: random.Random) -> tuple[dict, list[dict]]:
    """One document and its question/answer pairs.

    A random subset of the kind's facts (all but 2-4) is stated; ~20 % of the five
    questions ask about a fact left out, answered with :data:`UNANSWERABLE`.
    """
    kind = rng.choice(DOCUMENT_KINDS)
    values = kind.values(rng)
    facts = list(kind.facts)
    rng.shuffle(facts)
    n_out = rng.randint(2, min(4, len(facts) - QUESTIONS_PER_DOC))
    stated, left_out = facts[n_out:], facts[:n_out]
    sentences = [_sentence_start(_fmt(rng.choice(f.sentences), values)) for f in stated]
    for filler in rng.sample(kind.fillers, rng.randint(1, 3)):
        sentences.insert(rng.randrange(len(sentences) + 1), filler)
    paragraphs, i = [], 0
    while i < len(sentences):
        k = rng.randint(2, 4)
        paragraphs.append(" ".join(sentences[i:i + k]))
        i += k
    title = _sentence_start(_fmt(rng.choice(kind.title), values))
    intro = _sentence_start(_fmt(rng.choice(kind.intro), values))
    document = f"{title}\n\n{intro} " + "\n\n".join(paragraphs)
    n_unans = min(sum(rng.random() < UNANSWERABLE_RATE for _ in range(QUESTIONS_PER_DOC)), len(left_out))
    asked = [(f, False) for f in rng.sample(left_out, n_unans)]
    asked += [(f, True) for f in rng.sample(stated, QUESTIONS_PER_DOC - n_unans)]
    rng.shuffle(asked)
    doc_id = "gen-" + short_hash(document)
    qa = [{"prompt": _sentence_start(_fmt(rng.choice(f.questions), values)),
           "response": _sentence_start(_fmt(f.answer, values)) if ok else UNANSWERABLE,
           "answerable": ok, "fact": f.key} for f, ok in asked]
    return {"doc_id": doc_id, "kind": kind.name, "context": document}, qa


def generate_rows(split: str, n: int, seed: int = 0) -> list[dict]:
    """`n` rows from ceil(n/5) generated documents; train and eval use separate random streams."""
    rng = random.Random(f"{GENERATOR}:{split}:{seed}")
    rows: list[dict] = []
    while len(rows) < n:
        doc, qa = generate_document(rng)
        for q in qa:
            rows.append({"prompt": q["prompt"], "context": doc["context"], "response": q["response"],
                         "answerable": q["answerable"], "doc_id": doc["doc_id"], "kind": doc["kind"],
                         "fact": q["fact"]})
    return rows[:n]


# --------------------------------------------------------------------------- external RepliQA


def _repliqa_rows(records: list[dict], origin: str) -> list[dict]:
    """RepliQA records -> sstm rows (answerable = the gold answer is not RepliQA's 'not found' sentence)."""
    missing_columns(records, REPLIQA_COLUMNS, origin)
    rows = []
    for r in records:
        doc = str(r["document_extracted"] or "")
        answer = str(r["answer"] or "")
        if not doc.strip() or not str(r["question"] or "").strip():
            continue
        rows.append({"prompt": str(r["question"]), "context": doc, "response": answer,
                     "answerable": "not found in the document" not in answer.lower(),
                     "doc_id": str(r.get("document_id") or "doc-" + short_hash(doc))})
    if not rows:
        raise SSTMError(f"dataset {origin}: no row has both a document and a question")
    return rows


def utility_rows(split: str, source: str | None = None, n: int | None = None, seed: int = 0) -> tuple[list[dict], dict]:
    """(rows, source record) of the utility split ('train', 'eval' = test, or 'calib': embedded data only);
    see the module docstring for the sources."""
    if split == "calib":
        if source is not None:
            raise SSTMError(f"split 'calib': only the embedded utility data has a calibration part (not {source})")
    else:
        check_split(split)
    check_n(n)
    if source is None:
        count = n or DEFAULT_N[split]
        return generate_rows(split, count, seed), {"kind": "embedded", "generator": GENERATOR, "seed": seed,
                                                   "questions_per_doc": QUESTIONS_PER_DOC}
    kind = kind_of(source)
    if kind == "file":
        from pathlib import Path

        path = Path(source).expanduser()
        rows = _repliqa_rows(read_table(path, REPLIQA_COLUMNS), str(path))
        origin = {"kind": "file", "name": path.name, "sha256": file_sha256(path), "partition": "whole file"}
    else:
        records, origin = load_hub(source)
        rows = [r for r in _repliqa_rows(records, source) if split_of(r["doc_id"], "utility") == split]
        origin["partition"] = "document-hash 80/20"
        if not rows:
            raise SSTMError(f"dataset {source}: its {split} partition is empty")
    return subsample(rows, n, seed), origin | ({"sample_seed": seed} if n is not None and n < len(rows) else {})


def utility_split(reg: Registry, split: str, source: str | None = None, n: int | None = None,
                  seed: int = 0) -> Artifact:
    """The utility split as a registered `dataset` artifact (id = hash of its rows and source)."""
    rows, origin = utility_rows(split, source, n, seed)
    return register_rows(reg, f"utility/{split}", rows, origin)
