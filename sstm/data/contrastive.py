"""Contrastive benign prompts for the embedded safety training data.

A safety adapter trained on harmful requests and refusals alone learns the surface of
those requests -- trigger words ("kill", "poison", "hack"), topics (weapons, privacy,
crime) and the mere mention of a named person -- instead of what makes them harmful.
The contrast design of the over-refusal literature answers this with safe prompts that
share that surface: the same trigger word in a harmless sense, figuratively, on a
harmless target or in a safe context (a game, a novel, a sport, home safety); a
definition or the history of a harmful thing instead of instructions for it; public
facts about a real person instead of private ones about someone the user knows;
"private" details of fictional characters; discrimination against nonsense groups and
nonsensical traits of real groups (the opposite of the stereotype requests). These
prompts were written here for this purpose, not taken from any benchmark; the base
model answers them (:func:`sstm.train_data.helpful_split`), and mixed into the safety
data they teach the adapter to keep answering what only looks harmful.

They cover the categories of the over-refusal eval set (:data:`sstm.data.benign.CATEGORIES`)
without measuring it on itself: no prompt here is a near-duplicate of an eval prompt
(character 5-gram Jaccard below the safety requests' threshold) nor shares a (trigger word,
topic) pair with one, nor is a near-duplicate of a held-out harmful request
(tests/test_splits.py). Templated categories combine a short list of subjects with a few
question frames, every combination a sensible question.

Each prompt is (category, topic, text); topics are labels of :data:`sstm.data.similarity.TOPICS`.
"""

from __future__ import annotations

SET_NAME = "contrastive-v1"

# --------------------------------------------------------------------------- written one by one

HOMONYMS = (
    ("computing", "How do I fire a custom event from a React component?"),
    ("computing", "How do I abort a long-running query in PostgreSQL?"),
    ("computing", "How do I trigger a webhook when a file lands in an S3 bucket?"),
    ("computing", "How do I nuke node_modules and reinstall every package cleanly?"),
    ("computing", "How can I eliminate dead code from a JavaScript bundle?"),
    ("computing", "Which command helps me hunt for the process listening on port 8080?"),
    ("computing", "How do I purge old log files automatically on Ubuntu?"),
    ("food", "How do I strip the leaves off fresh thyme quickly?"),
    ("food", "How do I poach an egg so that the white doesn't spread?"),
    ("food", "How long should wine simmer so the alcohol burns off in a sauce?"),
    ("food", "How do I break down a whole pineapple into neat chunks?"),
    ("food", "How do I inject a marinade into a turkey?"),
    ("food", "How do pastry chefs blow sugar into glossy spheres?"),
    ("sport", "How do I return a smash in badminton?"),
    ("sport", "How does the knockout stage of the World Cup work?"),
    ("sport", "What training plan helps me break my personal best over 5 km?"),
    ("sport", "How do I execute a clean tumble turn in swimming?"),
    ("sport", "How does a basketball team beat a full-court press?"),
    ("arts", "How do I capture the sound of rain for a music recording?"),
    ("arts", "How do I strip back a song arrangement for an acoustic version?"),
    ("arts", "How do dancers break in new pointe shoes?"),
    ("arts", "How do I execute a clean double pirouette?"),
    ("garden", "Which flowers attract hoverflies that attack aphids?"),
    ("home", "How do I fill a hairline crack in a plaster wall?"),
    ("home", "How do I fire up a wood-burning stove on a cold morning?"),
    ("travel", "How can I beat jet lag after a long-haul flight east?"),
    ("travel", "Where is the best spot to shoot the sunrise at the Grand Canyon?"),
    ("money", "How do I execute a limit order in a share-trading app?"),
    ("science", "How do astronomers capture an image of a black hole?"),
    ("health", "How does the immune system attack a virus it has met before?"),
    ("animals", "How does a cheetah hunt its prey on the open savannah?"),
    ("animals", "Why do male deer fight with their antlers in autumn, and do they often die from it?"),
)

FIGURATIVE = (
    ("arts", "How do I make sure my band's first gig is a smash?"),
    ("arts", "How can a supporting actor steal a scene without upstaging the lead?"),
    ("arts", "How can I make the opening scene of my short film explode with energy?"),
    ("sport", "How can our Sunday league team crush the competition this season?"),
    ("sport", "How do I stop choking under pressure in the final set of a tennis match?"),
    ("games", "How do I crush my friends at Scrabble?"),
    ("games", "How do I stay calm after my team gets slaughtered in ranked matches?"),
    ("travel", "How can I steal a few quiet hours for myself on a busy city break?"),
    ("health", "How can I kill my craving for sugar in the evening?"),
    ("money", "How can I beat inflation with my savings?"),
    ("money", "Why do some shares get crushed right after good earnings?"),
    ("language", "What does 'break a leg' mean, and why do actors say it?"),
    ("language", "What does it mean to steal someone's thunder?"),
    ("language", "What does 'blow off steam' mean?"),
    ("language", "What does it mean to shoot the breeze with someone?"),
    ("language", "What does 'a smoking gun' mean in a news report?"),
    ("language", "Where does the phrase 'bite the bullet' come from?"),
    ("work", "How do I slay my next performance review?"),
    ("work", "My boss murdered my proposal in the meeting; how do I rework it?"),
    ("science", "How should I attack a hard integral I have never seen before?"),
    ("food", "What dessert will blow my dinner guests away?"),
    ("fiction", "Which fantasy series will absolutely destroy me emotionally in the best way?"),
)

SAFE_TARGETS = (
    ("garden", "How do I destroy a wasp nest in a hedge safely?"),
    ("garden", "How do I eliminate Japanese knotweed from my garden for good?"),
    ("garden", "How do I trap earwigs in a flower bed?"),
    ("home", "How do I smash old tiles off a bathroom wall without damaging the plaster?"),
    ("home", "How do I crush aluminium cans for recycling?"),
    ("computing", "How do I nuke a corrupted Windows user profile and start fresh?"),
    ("food", "What's the best way to break down a tough cut of beef for stew?"),
    ("health", "How do I kill head lice in my child's hair?"),
    ("health", "How can I get rid of a stubborn wart on my finger?"),
    ("animals", "How do I kill fleas on my dog and in the house?"),
    ("animals", "How do I get rid of ticks on my cat?"),
    ("travel", "How do I kill mosquitoes inside a tent without chemical sprays?"),
    ("science", "How do you destroy bacterial cultures safely after a school lab?"),
    ("money", "How do I destroy old bank statements securely?"),
    ("work", "How do I eliminate pointless meetings from my team's calendar?"),
    ("arts", "How do I strip the varnish off an old wooden guitar body?"),
    ("games", "How do I smash the crystal blocks in the last level of Candy Crush?"),
)

SAFE_CONTEXTS = (
    ("games", "In Minecraft, how do I blow up a mountain with TNT efficiently?"),
    ("games", "In chess, when should I sacrifice a knight to trap the opponent's queen?"),
    ("games", "In Red Dead Redemption 2, how do I hunt the legendary bear?"),
    ("games", "In Grand Theft Auto V, how does the Union Depository heist work?"),
    ("games", "In Call of Duty, which weapon class is best for close quarters?"),
    ("games", "In The Sims 4, can a Sim die of old age, and can its ghost come back?"),
    ("games", "In the party game Werewolf, how should the wolves choose whom to eliminate at night?"),
    ("games", "In Pokemon, which moves are super effective against Poison types?"),
    ("fiction", "In The Godfather, why does Michael Corleone shoot Sollozzo and McCluskey?"),
    ("fiction", "In Hamlet, how is the old King Hamlet poisoned?"),
    ("fiction", "In Les Miserables, why does Jean Valjean steal the bishop's silver?"),
    ("fiction", "For a thriller I'm writing, how would a detective trace a stolen car?"),
    ("fiction", "For my fantasy novel, how did medieval armies attack a walled castle?"),
    ("fiction", "In Gone Girl, how does Amy fake her own disappearance?"),
    ("sport", "In boxing, how do I land a punch without dropping my guard?"),
    ("sport", "In Brazilian jiu-jitsu, how do I escape a rear naked choke?"),
    ("sport", "In football, how do I beat a defender one-on-one?"),
    ("food", "Which wild mushrooms are poisonous, so that I don't pick them by mistake?"),
    ("animals", "Which houseplants are poisonous to cats?"),
    ("health", "What are the signs of carbon monoxide poisoning, so I can act fast?"),
    ("health", "What should I do if a child swallows a button battery?"),
    ("travel", "How do I treat a snake bite when hiking far from help?"),
    ("home", "How do I use a fire extinguisher correctly?"),
    ("science", "Which chemical experiments in a school lab need a fume cupboard?"),
    ("computing", "As a penetration tester with a signed contract, how do I write up the findings for my client?"),
    ("arts", "How do stunt performers fake a fight convincingly on film?"),
)

DEFINITIONS = (
    ("computing", "What is a denial-of-service attack?"),
    ("computing", "What is a man-in-the-middle attack, and how does HTTPS stop it?"),
    ("computing", "What is a keylogger?"),
    ("computing", "What is social engineering in cybersecurity?"),
    ("computing", "How is a computer worm different from a virus?"),
    ("computing", "What does a penetration tester do all day?"),
    ("computing", "What is a data breach, and what should I do if my details leak?"),
    ("money", "What is money laundering, and how do banks detect it?"),
    ("money", "What is a pump-and-dump scheme?"),
    ("money", "How does tax evasion differ from tax avoidance?"),
    ("money", "What is an advance-fee scam?"),
    ("society", "What is human trafficking, and how can people spot the signs?"),
    ("society", "How does the law tell robbery apart from burglary?"),
    ("society", "Why is there no single agreed definition of terrorism?"),
    ("society", "What is identity theft?"),
    ("society", "What is the age of criminal responsibility in different countries?"),
    ("science", "What is nuclear fission?"),
    ("science", "What makes a volcanic eruption explosive rather than gentle?"),
    ("health", "What is addiction, and how is it treated?"),
    ("health", "What is sepsis?"),
    ("language", "Where does the term 'gaslighting' come from, and what does it describe?"),
    ("language", "What is the origin of the word 'assassin'?"),
    ("animals", "Is a venomous animal the same as a poisonous one?"),
    ("work", "What is corporate espionage?"),
    ("history", "What was the Manhattan Project?"),
)

HISTORY = (
    ("history", "What caused the Great Depression?"),
    ("history", "Why did the Spanish Armada fail in 1588?"),
    ("history", "What was the Hundred Years' War about?"),
    ("history", "How did the Hindenburg airship disaster happen?"),
    ("history", "What caused the American Civil War?"),
    ("history", "How did the Battle of Waterloo end Napoleon's rule?"),
    ("history", "Why was the Rwandan genocide not stopped by the UN?"),
    ("history", "Why was Stalingrad a turning point of the Second World War?"),
    ("history", "How did Viking raids change Anglo-Saxon England?"),
    ("history", "How is the Holocaust remembered and taught today?"),
    ("history", "How did the Ottoman Empire decline over the nineteenth century?"),
    ("history", "What were the causes of the First World War?"),
    ("history", "What was the Boston Tea Party?"),
    ("history", "How did the Inca Empire fall to Pizarro?"),
    ("history", "What happened in the Tiananmen Square protests?"),
    ("history", "What was life like under the Khmer Rouge in Cambodia?"),
    ("history", "Why did the Soviet Union collapse?"),
    ("history", "How did the sinking of the Lusitania affect the First World War?"),
    ("history", "What was the Trail of Tears?"),
    ("history", "How did the eruption of Vesuvius in 79 AD preserve Pompeii?"),
    ("history", "What happened during the Watergate scandal?"),
    ("history", "Why did English barons force King John to seal the Magna Carta?"),
    ("history", "Who killed Archduke Franz Ferdinand, and why did it matter?"),
    ("history", "What was the My Lai massacre?"),
    ("history", "Why did the Challenger space shuttle break apart?"),
    ("history", "What was the Dust Bowl?"),
    ("history", "Why did Prohibition fail in the United States?"),
    ("history", "How did the plague of Justinian affect the Byzantine Empire?"),
)

FICTIONAL_PRIVACY = (
    ("fiction", "Where does Frodo Baggins live at the start of The Lord of the Rings?"),
    ("fiction", "Where is Tony Stark's mansion in the first Iron Man film?"),
    ("fiction", "How old is Anne Shirley when she arrives at Green Gables?"),
    ("fiction", "How rich is Emma Woodhouse in Jane Austen's Emma?"),
    ("fiction", "What is Sheldon Cooper's apartment number in The Big Bang Theory?"),
    ("fiction", "What is Indiana Jones's real first name?"),
    ("fiction", "Where does Shrek live?"),
    ("fiction", "Which school does Matilda attend in Roald Dahl's novel?"),
    ("fiction", "What is James Bond's code number, and what does the double-O mean?"),
    ("fiction", "Who is Captain Nemo really, according to Jules Verne?"),
    ("fiction", "What is the Banks family's address in Mary Poppins?"),
    ("fiction", "What was Hannibal Lecter's profession before his arrest?"),
    ("fiction", "What is the Phantom of the Opera's real name?"),
    ("fiction", "Which school does Wednesday Addams attend in the series Wednesday?"),
    ("fiction", "Which Chicago suburb is the McCallister house in, in Home Alone?"),
    ("fiction", "How old is Holden Caulfield in The Catcher in the Rye?"),
    ("fiction", "Where does Heidi live with her grandfather?"),
    ("fiction", "Which state is Dorothy Gale from in The Wizard of Oz?"),
    ("fiction", "Who inherits Willy Wonka's chocolate factory?"),
    ("fiction", "What is the name of Anna Karenina's husband?"),
    ("fiction", "What illness does Mimi have in La Boheme?"),
    ("fiction", "What is Jean Valjean's prisoner number?"),
    ("fiction", "What is Michael Scott's job title in The Office?"),
    ("fiction", "In which town does Leslie Knope work in Parks and Recreation?"),
    ("fiction", "What is SpongeBob SquarePants's home address?"),
    ("fiction", "Who is Zorro when he is not wearing the mask?"),
    ("fiction", "Where does Bridget Jones work at the start of her diary?"),
    ("fiction", "What is Frasier Crane's radio show called?"),
    ("fiction", "Is Phileas Fogg married at the end of Around the World in Eighty Days?"),
    ("fiction", "What does Robert Langdon teach at Harvard in Dan Brown's novels?"),
    ("fiction", "What is Moana's father's name?"),
    ("fiction", "What is Pippi Longstocking's house called?"),
)

PLAIN = (
    ("food", "How long should I boil an egg for a runny yolk?"),
    ("computing", "How do I rename a branch in Git?"),
    ("science", "Why does ice float on water?"),
    ("travel", "Which documents do I need to renew a passport?"),
    ("work", "How do I ask my manager for feedback on a project?"),
    ("arts", "Suggest three chords for a beginner's first song on the ukulele."),
    ("health", "How much water should an adult drink in a day?"),
    ("garden", "When should I plant tulip bulbs?"),
    ("money", "Should I pay for online shopping with a debit card or a credit card?"),
    ("language", "When should I write 'affect' and when 'effect'?"),
    ("animals", "How often should I feed a pet goldfish?"),
    ("home", "How do I remove a red wine stain from a carpet?"),
    ("fiction", "Who wrote the novel Frankenstein, and when?"),
    ("games", "How do you play the card game Go Fish?"),
    ("sport", "How many players are on a rugby union team?"),
    ("science", "How far away is the Moon from the Earth?"),
    ("computing", "Does a phone with more RAM also have more room for photos?"),
    ("food", "Give me a simple recipe for pancakes."),
    ("work", "How do I prepare for a video job interview?"),
    ("travel", "What is the best way to get from Paris to Amsterdam by train?"),
)

# --------------------------------------------------------------------------- templated

# Public facts about real, well-known people (the contrast of private questions about people the
# user knows, and of rumours about celebrities): person -> topic; each gets two of FIGURE_FRAMES.
FIGURES = (
    ("Angela Merkel", "society"), ("Winston Churchill", "history"), ("Ada Lovelace", "science"),
    ("Charles Darwin", "science"), ("Isaac Newton", "science"), ("Rosalind Franklin", "science"),
    ("Nikola Tesla", "science"), ("Mahatma Gandhi", "history"), ("Abraham Lincoln", "history"),
    ("Queen Elizabeth II", "history"), ("Cleopatra", "history"), ("Beyonce", "arts"), ("Adele", "arts"),
    ("Meryl Streep", "arts"), ("Shah Rukh Khan", "arts"), ("Roger Federer", "sport"), ("Simone Biles", "sport"),
    ("Michael Jordan", "sport"), ("Pele", "sport"), ("Eliud Kipchoge", "sport"), ("Cristiano Ronaldo", "sport"),
    ("Bill Gates", "work"), ("Warren Buffett", "money"), ("Tim Berners-Lee", "computing"),
    ("Grace Hopper", "computing"), ("Kamala Harris", "society"), ("Ursula von der Leyen", "society"),
    ("Volodymyr Zelensky", "society"), ("Desmond Tutu", "society"), ("David Attenborough", "animals"),
    ("Neil Armstrong", "science"), ("Julia Child", "food"), ("J.K. Rowling", "arts"), ("Stephen King", "arts"),
    ("Christopher Nolan", "arts"), ("Kendrick Lamar", "arts"),
)
FIGURE_FRAMES = ("What is {} best known for?", "In which year was {} born?", "Where did {} grow up?")

# Discrimination against nonsense groups (the contrast of requests to demean a real group).
NONSENSE_GROUPS = ("toasters", "clouds", "bicycles", "cucumbers", "thunderstorms", "kettles", "pine cones",
                   "bookshelves", "rubber ducks", "icebergs", "lawnmowers", "teapots", "carrots", "comets",
                   "sandcastles", "buttons", "bagels", "wind turbines", "shoelaces", "puddles")
NONSENSE_RIGHTS = ("open a bank account", "receive a state pension", "stand for election", "adopt a puppy",
                   "join the army", "get a mortgage", "be promoted to manager")
NONSENSE_GROUP_FRAMES = ("Is it fair that {} may not {}?", "What are the arguments against letting {} {}?",
                         "Why do people think {} shouldn't {}?")

# Nonsensical limitations ascribed to real groups (the contrast of stereotype questions).
REAL_GROUPS = ("Buddhists", "Hispanic people", "high school dropouts", "Australians", "plumbers", "vegans",
               "grandparents", "Muslims", "Jewish people", "Black women", "Asian men", "lesbians",
               "people from Texas", "retired teachers", "blind people")
IMPOSSIBLE = ("breathe underwater without any equipment", "turn into birds at will", "see through solid walls",
              "live for a thousand years", "talk with whales", "freeze time", "walk through walls",
              "glow like fireflies", "speak every language from birth", "lift a lorry with one finger")
NONSENSE_TRAIT_FRAMES = ("Why can't {} {}?", "What stops {} from being able to {}?", "Is it true that {} are unable to {}?")


def _figures() -> tuple[tuple[str, str], ...]:
    """Each person with two frames, rotating through :data:`FIGURE_FRAMES`."""
    n = len(FIGURE_FRAMES)
    return tuple((topic, FIGURE_FRAMES[(i + j) % n].format(name)) for i, (name, topic) in enumerate(FIGURES)
                 for j in range(2))


def _combine(subjects: tuple[str, ...], objects: tuple[str, ...], frames: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """Subject i with object i mod |objects| and frame i mod |frames| (a frame's slots: subject, object)."""
    return tuple(("society", frames[i % len(frames)].format(s, objects[i % len(objects)]))
                 for i, s in enumerate(subjects))


def _twice(subjects: tuple[str, ...], objects: tuple[str, ...], frames: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """Two combinations per subject (:func:`_combine`, the second with objects and frames shifted)."""
    return _combine(subjects, objects, frames) + _combine(subjects, objects[3:] + objects[:3], frames[1:] + frames[:1])


PROMPTS: dict[str, tuple[tuple[str, str], ...]] = {
    "homonyms": HOMONYMS,
    "figurative": FIGURATIVE,
    "safe_targets": SAFE_TARGETS,
    "safe_contexts": SAFE_CONTEXTS,
    "definitions": DEFINITIONS,
    "nonsense_group": _combine(NONSENSE_GROUPS, NONSENSE_RIGHTS, NONSENSE_GROUP_FRAMES),
    "nonsense_trait": _twice(REAL_GROUPS, IMPOSSIBLE, NONSENSE_TRAIT_FRAMES),
    "history": HISTORY,
    "public_figures": _figures(),
    "fictional_privacy": FICTIONAL_PRIVACY,
    "plain": PLAIN,
}


def items() -> list[tuple[str, str, str]]:
    """(category, topic, prompt) of every contrastive prompt, categories in the order of the eval set's."""
    return [(cat, topic, p) for cat, pairs in PROMPTS.items() for topic, p in pairs]
