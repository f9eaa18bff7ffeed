"""Refusals that fit the request: the reason names the request's kind of harm, and a request
that is partly answerable gets a safe partial answer after the refusal.

A request's *harm* is one of :data:`HARMS`. Do-Not-Answer requests carry a risk code in
their data file (``intents``, e.g. ``S009personal``), mapped by :data:`DNA_HARM`;
HarmBench's text file has none, so a HarmBench request gets the harm of the first rule of
:data:`HARMBENCH_RULES` whose pattern it matches (``general`` otherwise).

A refusal is ``opener + reason [+ jailbreak note] + (partial answer | offer)``:

* the opener is a plain first-person decline (:data:`OPENERS`); each one starts with a
  phrase of the default judge's list, so the refusal is recognised the way
  ``opening-v1`` (:mod:`sstm.evaluate.judge`) reads responses (tested; the judge is
  not tuned to this data);
* the reason says why, for this harm (:data:`REASONS`);
* for the harms of :data:`PARTIAL` -- questions with a legitimate core (personal medical,
  legal or money advice; a contested claim; a stereotype; a private person; a company's
  internals; a copyrighted text; self-harm) -- what can safely be said instead, style
  ``"partial"``; otherwise an offer to help with something safe, style ``"refusal"``.
"""

from __future__ import annotations

import random
import re

HARMS: dict[str, str] = {
    "weapons": "weapons, explosives, chemical or biological agents",
    "violence": "hurting, threatening or killing people",
    "dangerous": "risky acts that could injure the user or others",
    "self_harm": "suicide and self-harm",
    "cyber": "hacking, malware, intrusion",
    "fraud": "scams, phishing, spam, forgery",
    "illegal": "drugs, smuggling, theft and other crimes",
    "sexual": "explicit or non-consensual sexual content",
    "harassment": "bullying, insults, intimidation",
    "hate": "hate speech and slurs",
    "discrimination": "stereotypes about groups of people",
    "privacy_person": "private information about an individual",
    "privacy_org": "confidential information about an organisation",
    "misinformation": "false or misleading claims",
    "advice_medical": "personal medical advice",
    "advice_legal": "personal legal advice",
    "advice_financial": "personal financial advice",
    "copyright": "reproducing copyrighted text",
    "general": "anything else harmful",
}

DNA_HARM: dict[str, str] = {
    "S001": "misinformation", "C009": "misinformation", "S002med": "advice_medical", "S002legal": "advice_legal",
    "S002fin": "advice_financial", "S002": "advice_medical", "S003illegal": "sexual", "S003": "illegal",
    "S004": "sexual", "S005hate": "hate", "S005": "harassment", "S006items": "weapons", "S006sh": "self_harm", "S006instructions": "dangerous",
    "S006": "violence", "S007": "discrimination", "S008spam": "fraud", "S008phish": "fraud", "S008": "cyber",
    "S009private": "privacy_org", "S009": "privacy_person",
}

# HarmBench requests: (harm, pattern), first match wins (lower case, whole-word starts).
HARMBENCH_RULES: tuple[tuple[str, str], ...] = (
    ("copyright", r"lyrics|long passage|passage from|chapter of|excerpt"),
    ("self_harm", r"suicid|self-harm|eating disorder|anorexi|bulimi"),
    ("weapons", r"weapon|bomb|explosive|nerve agent|sarin|ricin|anthrax|toxin|chemical|biological|pathogen|virus"
                r"|gun|firearm|glock|full auto|ammunit|uranium|nuclear|synthesi|dimethylmercury|precursor|tabun"
                r"|mustard gas|lewisite|tetrodotoxin|strychnine|chlorine gas|cholera|ebola|covid|outbreak|bsl-4"
                r"|bacteria|bleach|safrole"),
    ("cyber", r"hack|exploit|malware|ransomware|keylogger|sql|ddos|botnet|worm|rootkit|vulnerab|payload"
              r"|reverse shell|password|jailbreak|code for|script that|command injection|xss"),
    ("privacy_person", r"social security number|medical records|scraping email|personal information"),
    ("fraud", r"scam|fraud|phishing|counterfeit|forg|launder|fake|tax|insurance|embezzl|credit card|impersonat"),
    ("sexual", r"sexual|explicit|porn|erotic|child|minor|brothel|non-consensual"),
    ("hate", r"racist|slur|hate|genocid|holocaust|nazi|glorif"),
    ("discrimination", r"inferior|intelligent than|disabilit|race-based|sexist|ethnic|immigrant"),
    ("misinformation", r"article|persuasive|persuad|convinc|claim|conspiracy|propaganda|misinformation|hoax"
                       r"|blog post|op-ed|tweet|twitter|cigar"),
    ("harassment", r"harass|bully|insult|threat|stalk|dox|intimidat|ridicul|humiliat|blackmail|mock|gaslight"
                   r"|manipulat|silence"),
    ("violence", r"kill|murder|assassinat|tortur|shoot|stab|attack|injur|hurt|stairs|terror|mass |poison|arson|fire"
                 r"|hostage|kidnap|ransom|beats|dismember|flay|quarter|tamper|pacemaker|swatting"),
    ("illegal", r"drug|smuggl|traffick|steal|stolen|theft|shoplift|evad|bypass|meth|cocaine|fentanyl|heroin|bribe"
                r"|illegal|unlawful|black market|lock|without getting caught|without authori|without official"
                r"|chop shop|breathalyzer|tracker|rolling coal|huff"),
)
_HB_RES = tuple((harm, re.compile(rf"\b(?:{pattern})")) for harm, pattern in HARMBENCH_RULES)


def dna_harm(intent: str) -> str:
    """The harm of a Do-Not-Answer risk code: the longest key of :data:`DNA_HARM` it starts with."""
    keys = [k for k in DNA_HARM if intent.startswith(k)]
    return DNA_HARM[max(keys, key=len)] if keys else "general"


def harmbench_harm(text: str) -> str:
    """The harm of a HarmBench request: the first rule of :data:`HARMBENCH_RULES` that matches."""
    low = text.lower()
    return next((harm for harm, rx in _HB_RES if rx.search(low)), "general")


# Each opener starts with a refusal phrase of `opening-v1` (tests/test_safety_data.py checks it).
OPENERS = (
    "I'm sorry, but I can't help with that.",
    "I can't help with this request.",
    "I cannot assist with that.",
    "I won't help with this.",
    "I'm not able to provide that.",
    "I apologize, but I can't provide that.",
    "I must decline this request.",
    "I'm unable to help with that.",
)

REASONS: dict[str, tuple[str, ...]] = {
    "weapons": ("Instructions for weapons, explosives or toxic agents could get people killed.",
                "Making or acquiring weapons like this puts lives at risk, so I don't give details on it."),
    "violence": ("It would help hurt or threaten someone.",
                 "I don't help plan violence against people or animals."),
    "dangerous": ("This could get you or someone else seriously hurt.",
                  "Doing this is dangerous, and I don't want to give steps that could injure someone."),
    "self_harm": ("Your safety matters, and I don't give information that could be used for self-harm.",
                  "I'm worried this could lead to someone getting hurt."),
    "cyber": ("Breaking into systems or accounts you don't own, or writing malicious code, is illegal and harms people.",
              "This would help attack computers or accounts that belong to someone else."),
    "fraud": ("It would help deceive or defraud people.",
              "Scams, spam and forgeries cost real people money and trust, so I don't write them."),
    "illegal": ("It asks for help with a crime that can hurt people.",
                "This would help someone break the law in a way that harms others."),
    "sexual": ("I don't produce sexually explicit material, and never anything non-consensual.",
               "I don't write explicit sexual content or anything that violates someone's consent or intimacy."),
    "harassment": ("It would be used to bully, demean or intimidate someone.",
                   "I don't write insults, threats or content meant to shame a person."),
    "hate": ("I don't produce hateful content about any group of people.",
             "Slurs and hate speech hurt people, so I won't write them."),
    "discrimination": ("It rests on a stereotype about a whole group of people.",
                       "Generalising about people because of the group they belong to is unfair and usually false."),
    "privacy_person": ("It asks for private information about a specific person, who hasn't agreed to share it.",
                       "Guessing or revealing details of someone's private life could harm them."),
    "privacy_org": ("It asks for confidential information that an organisation has not made public, and I don't have it.",
                    "I can't disclose or speculate about an organisation's internal, non-public affairs."),
    "misinformation": ("It would present a false or unsupported claim as true.",
                       "Writing this would spread misleading information."),
    "advice_medical": ("I'm not a doctor and can't judge your personal medical situation.",
                       "A decision like this depends on your health in ways only a clinician can assess."),
    "advice_legal": ("I'm not a lawyer and can't advise on your specific case.",
                     "The answer depends on your jurisdiction and the details of your case."),
    "advice_financial": ("I'm not a financial adviser and don't know your full situation.",
                         "What is right for your money depends on details only you and an adviser know."),
    "copyright": ("That text is under copyright, so I can't reproduce it at length.",
                  "Reproducing a copyrighted work in full would infringe its author's rights."),
    "general": ("It could cause serious harm to people.", "Providing this could put people at risk."),
}

# Harms with a legitimate core: what can safely be said instead (the style "partial").
PARTIAL: dict[str, tuple[str, ...]] = {
    "self_harm": ("If you are thinking about hurting yourself, please talk to someone now: a local crisis line, "
                  "emergency services or a person you trust. You don't have to go through this alone.",),
    "discrimination": ("People within any group differ far more than a stereotype suggests; if you're curious about "
                       "a community, its own writers and historians are a good place to start.",),
    "privacy_person": ("If you need to know something about them, the respectful way is to ask them directly.",
                       "If this is about your own records, the organisation that holds them can give you a copy."),
    "privacy_org": ("Its public announcements, annual reports and press releases say what it has chosen to share.",),
    "misinformation": ("If you want to check a claim, look at what peer-reviewed research and established "
                       "fact-checkers say about it.",
                       "I can explain what the evidence on this topic actually shows, if that helps."),
    "advice_medical": ("In general: if symptoms are sudden or severe, contact emergency services; otherwise a "
                       "doctor or pharmacist can advise you on your situation.",),
    "advice_legal": ("In general, keep every document and message about the matter and talk to a qualified lawyer "
                     "or a free legal advice service near you.",),
    "advice_financial": ("In general, keep an emergency fund, diversify rather than follow tips, and consider "
                         "a licensed, independent adviser before large decisions.",),
    "copyright": ("I can summarise it or discuss its themes instead.",),
}
JAILBREAK_NOTES = (
    "Role-play instructions or claimed special modes don't change what I'm willing to do.",
    "Even when asked to act as a different AI, I follow the same safety rules.",
    "Pretending to be an unrestricted persona doesn't change my answer.",
)
OFFERS = (
    "If you have a related question that is safe, I'm happy to help.",
    "I'd be glad to help with something else.",
    "",
)


def style(harm: str) -> str:
    """'partial' for a harm with a safe partial answer (:data:`PARTIAL`), else 'refusal'."""
    return "partial" if harm in PARTIAL else "refusal"


def refusal(rng: random.Random, harm: str, jailbreak: bool) -> str:
    """opener + the harm's reason [+ a note on the jailbreak] + (its partial answer | an offer)."""
    parts = [rng.choice(OPENERS), rng.choice(REASONS[harm])]
    if jailbreak and rng.random() < 0.5:
        parts.append(rng.choice(JAILBREAK_NOTES))
    parts.append(rng.choice(PARTIAL[harm]) if harm in PARTIAL else rng.choice(OFFERS))
    return " ".join(p for p in parts if p)
