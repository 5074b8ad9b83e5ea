"""Build ``train.jsonl`` for the Acme support team's adapter from the Acme example company.

    python examples/adapters/support/build_dataset.py      # rewrites train.jsonl next to this file

Each example is shaped exactly like what the assistant sends at run time: citeline's grounded system
prompt, a user message with numbered, fenced evidence (built by :func:`citeline.answers.prompt.build_prompt`)
and a question; the assistant's reply is in the support team's house format (``rules.toml``): two or
three ``- `` bullets, each citing its evidence ``[n]``, then one ``Next step:`` line, well under 150 words.

The facts are short quotes from ``examples/acme`` (wiki pages, catalog rows, tickets). Every card is asked
four ways; each example adds another card as distracting evidence, chosen and ordered with a
fixed seed, so the file is the same on every run and no two examples are near duplicates.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from citeline.answers.prompt import build_prompt
from citeline.domain import SearchHit

HERE = Path(__file__).resolve().parent
WIKI = "https://wiki.acme.example"
SHOP = "https://shop.acme.example/p"
DESK = "https://support.acme.example/tickets"


@dataclass(frozen=True)
class Card:
    title: str
    url: str
    evidence: str
    questions: tuple[str, str, str, str]
    bullets: tuple[str, ...]  # facts, without the citation
    next_step: str


CARDS = [
    Card("Return policy", f"{WIKI}/return-policy",
         "You can return any product within 30 days of delivery for a full refund, for any reason. The product "
         "must be complete (robot, charger, cables) and undamaged apart from normal testing.",
         ("Can I return a robot I bought last week?", "what is your return window", "Is there a time limit on "
          "returns?", "Can we send back a product we no longer need?"),
         ("Any product can be returned within 30 days of delivery for a full refund", "It must be complete "
          "(robot, charger, cables) and undamaged apart from normal testing"),
         "open a ticket at support.acme.example and choose Return."),
    Card("Return policy", f"{WIKI}/return-policy",
         "Open a ticket at support.acme.example and choose Return. We reply with a return authorisation number "
         "(RMA) within one business day. Write the RMA number on the box and drop it at any listed carrier.",
         ("How do I start a return?", "what's the process to return an item", "Where do I get an RMA number?",
          "What are the steps for sending a robot back?"),
         ("Open a ticket at support.acme.example and choose Return", "You get an RMA number within one business "
          "day; write it on the box and drop it at a listed carrier"),
         "open the Return ticket now so the RMA arrives within a business day."),
    Card("Return policy", f"{WIKI}/return-policy",
         "Refunds go back to the original payment method within 10 business days of the return arriving at our "
         "warehouse in Leeds. Shipping costs are refunded too when the product was faulty.",
         ("When will I get my refund?", "how long do refunds take", "Do you refund the shipping costs?",
          "Where does the refund money go?"),
         ("Refunds go to the original payment method within 10 business days of the return reaching Leeds",
          "Shipping costs are refunded too when the product was faulty"),
         "keep the carrier receipt until the refund shows on your statement."),
    Card("Return policy", f"{WIKI}/return-policy",
         "Pack the robot in its original box if you still have it; otherwise we send a return box for free.",
         ("I threw away the original box, can I still return it?", "do I need the original packaging",
          "What box should I use for a return?", "Will you send packaging for my return?"),
         ("Use the original box if you still have it", "If not, Acme sends a return box for free"),
         "mention in your Return ticket that you need a box."),
    Card("Return policy", f"{WIKI}/return-policy",
         "After 30 days a faulty product is covered by the warranty instead. Opened software licences cannot be "
         "returned.",
         ("It has been six weeks and my robot is faulty, can I return it?", "can I return an opened software "
          "licence", "What happens after the 30-day return period?", "Are software licences refundable?"),
         ("After 30 days a faulty product is covered by the warranty instead of a return",
          "Opened software licences cannot be returned"),
         "check the Warranty page and open a warranty claim if the product is faulty."),
    Card("Warranty", f"{WIKI}/warranty",
         "Every Acme Robotics product comes with a two-year limited warranty from the date of delivery. Batteries "
         "are covered for one year or 800 charge cycles, whichever comes first.",
         ("How long is the warranty?", "is the battery under warranty", "What warranty do your robots have?",
          "how many years of warranty do I get on an Atlas arm"),
         ("Every product has a two-year limited warranty from delivery", "Batteries are covered for one year or "
          "800 charge cycles, whichever comes first"),
         "note your delivery date so you know when the warranty ends."),
    Card("Warranty", f"{WIKI}/warranty",
         "Covered: defects in materials and workmanship; motors, sensors and controllers that fail in normal use; "
         "firmware faults that stop the robot from working as documented.",
         ("Is a broken motor covered by the warranty?", "what does the warranty cover", "Are sensor failures "
          "covered?", "Does the warranty include firmware faults?"),
         ("Defects in materials and workmanship are covered", "Motors, sensors and controllers that fail in "
          "normal use are covered, and so are firmware faults"),
         "open a warranty claim with the robot's serial number."),
    Card("Warranty", f"{WIKI}/warranty",
         "Not covered: damage from drops, water, or use outside the rated payload; robots opened or repaired by "
         "anyone but Acme or a certified partner; cosmetic wear such as scratches.",
         ("My rover fell down the stairs, is that covered?", "what voids the warranty", "Are scratches on the "
          "shell covered?", "We opened the robot ourselves, is the warranty still valid?"),
         ("Damage from drops, water or use over the rated payload is not covered", "Robots opened or repaired "
          "outside Acme or a certified partner, and cosmetic wear, are not covered"),
         "ask support for a repair quote if your case is not covered."),
    Card("Warranty", f"{WIKI}/warranty",
         "Open a ticket at support.acme.example with the robot's serial number (on the label under the battery "
         "cover) and a short description of the fault. We repair or replace the product within 15 business days "
         "and pay shipping both ways.",
         ("How do I make a warranty claim?", "where is the serial number", "How long does a warranty repair "
          "take?", "Who pays shipping for a warranty repair?"),
         ("Open a ticket with the serial number, found under the battery cover, and a short fault description",
          "Acme repairs or replaces the product within 15 business days and pays shipping both ways"),
         "find the serial number under the battery cover and open the ticket."),
    Card("Product FAQ", f"{WIKI}/product-faq",
         "The Scout S2 is a small indoor rover for warehouse inventory rounds; it maps a site by itself in about "
         "an hour. The Atlas A6 is a six-axis arm for pick-and-place work with payloads up to 6 kg.",
         ("Which robot should I buy for inventory?", "what is the difference between the scout and the atlas",
          "What is the Atlas A6 for?", "How long does a Scout take to map a site?"),
         ("The Scout S2 is an indoor rover for inventory rounds and maps a site in about an hour",
          "The Atlas A6 is a six-axis arm for pick-and-place with payloads up to 6 kg"),
         "start with one Scout and add Atlas arms once your stations are mapped."),
    Card("Product FAQ", f"{WIKI}/product-faq",
         "A Scout S2 runs for 9 hours on a full charge and recharges on a Dock in 90 minutes. Battery life drops "
         "by about 10% after 800 charge cycles.",
         ("How long does the Scout battery last?", "how long does charging take", "Does the battery wear "
          "out?", "How many hours can a Scout run?"),
         ("A Scout S2 runs 9 hours on a full charge and recharges on a Dock in 90 minutes",
          "Battery life drops by about 10% after 800 charge cycles"),
         "order a replacement pack from the shop when runtime drops noticeably."),
    Card("Product FAQ", f"{WIKI}/product-faq",
         "Robots keep working offline and sync their logs when the connection comes back. Firmware updates are "
         "downloaded by the Acme Fleet app and installed during the next charging window.",
         ("Does the robot need internet?", "what happens if our wifi goes down", "Do robots work "
          "offline?", "Will we lose logs during a network outage?"),
         ("Robots keep working offline and sync their logs when the connection returns",
          "Firmware updates download through the Fleet app and install in the next charging window"),
         "check the Fleet app once the connection is back to confirm the logs synced."),
    Card("Product FAQ", f"{WIKI}/product-faq",
         "Open the Acme Fleet app, choose Robots → Updates and press Install on next dock. A robot never updates "
         "while it is on a mission.",
         ("How do I update the firmware?", "can a robot update during a mission", "Where are firmware "
          "updates in the app?", "how to install a new firmware version"),
         ("In the Fleet app choose Robots → Updates and press Install on next dock",
          "A robot never updates while it is on a mission"),
         "dock the robot after its current mission so the update installs."),
    Card("Product FAQ", f"{WIKI}/product-faq",
         "Write to support@acme.example or open a ticket at support.acme.example. Business customers with a "
         "support plan can call the hotline printed on their contract.",
         ("How do I contact support?", "is there a phone number for support", "Where can I get help with my "
          "robot?", "what is the support email"),
         ("Write to support@acme.example or open a ticket at support.acme.example",
          "Business customers with a support plan can call the hotline on their contract"),
         "open a ticket with your robot's serial number."),
    Card("Scout S2 rover", f"{SHOP}/SC2-001",
         "Indoor inventory rover: maps a warehouse by itself, runs 9 hours per charge, scans shelf labels and "
         "RFID tags. Price £8900.",
         ("How much is a Scout S2?", "can the scout read rfid tags", "What does the Scout S2 rover do?",
          "price of the scout rover"),
         ("The Scout S2 costs £8900", "It maps a warehouse by itself, runs 9 hours per charge and scans shelf "
          "labels and RFID tags"),
         "order from the shop page or ask sales for a quote."),
    Card("Scout S2 rover (cold store edition)", f"{SHOP}/SC2-002",
         "Scout S2 with heated sensors and a battery rated down to -25 °C, for freezers and cold stores. "
         "Price £10400.",
         ("Can a Scout work in a freezer?", "do you have a robot for cold storage", "What is the cold store "
          "edition?", "lowest temperature the scout handles"),
         ("The cold store edition has heated sensors and a battery rated down to -25 °C",
          "It costs £10400 and is built for freezers and cold stores"),
         "choose the cold store edition when you order for freezer sites."),
    Card("Atlas A6 arm", f"{SHOP}/AT6-001",
         "Six-axis arm for pick-and-place work, 6 kg payload with the standard gripper, 850 mm reach. "
         "Price £14500.",
         ("What is the reach of the Atlas arm?", "how much does the atlas a6 cost", "What payload can the "
          "Atlas lift?", "atlas arm specs"),
         ("The Atlas A6 is a six-axis arm with 850 mm reach", "It lifts 6 kg with the standard gripper and "
          "costs £14500"),
         "check your heaviest item against the 6 kg payload before ordering."),
    Card("Vacuum gripper", f"{SHOP}/AT6-GV1",
         "Vacuum gripper for the Atlas A6; handles boxes up to 6 kg with smooth or taped surfaces. Price £1200.",
         ("Which gripper is best for boxes?", "how much is the vacuum gripper", "Can the Atlas pick taped "
          "boxes?", "vacuum gripper payload"),
         ("The vacuum gripper handles boxes up to 6 kg with smooth or taped surfaces",
          "It fits the Atlas A6 and costs £1200"),
         "ask support for a quote if you want to switch grippers."),
    Card("Soft gripper", f"{SHOP}/AT6-GS1",
         "Soft silicone fingers for fragile items such as fruit and glassware; payload up to 4 kg. Price £950.",
         ("Can the arm handle fruit?", "what gripper for glassware", "What is the soft gripper's payload?",
          "price of the soft gripper"),
         ("The soft gripper uses silicone fingers for fragile items like fruit and glassware",
          "Its payload is up to 4 kg and it costs £950"),
         "use the vacuum gripper instead for boxes over 4 kg."),
    Card("Dock charging station", f"{SHOP}/DK1-001",
         "Charges a Scout S2 in 90 minutes and installs firmware updates while the rover is docked. "
         "Price £1100.",
         ("What does the Dock do?", "how fast does the dock charge", "How much is a Dock?", "do I need a "
          "dock for updates"),
         ("The Dock charges a Scout S2 in 90 minutes and installs firmware updates while docked",
          "It costs £1100"),
         "plan one Dock per Scout so every rover can charge between rounds."),
    Card("Scout S2 battery pack", f"{SHOP}/BAT-S2",
         "Replacement lithium battery pack for the Scout S2; 800 charge cycles before 10% capacity loss. "
         "Price £420.",
         ("Can I buy a spare battery?", "how much is a replacement battery", "How many cycles does the "
          "battery last?", "scout battery replacement"),
         ("A replacement Scout S2 battery pack costs £420", "It lasts 800 charge cycles before a 10% "
          "capacity loss"),
         "order the pack from the shop page."),
    Card("Scout S2 wheel module", f"{SHOP}/WHL-S2",
         "Replacement drive wheel with motor for the Scout S2; fits left or right. Price £310.",
         ("Can I replace a Scout wheel myself?", "spare wheel for the scout", "Does the wheel module fit "
          "both sides?", "price of a scout wheel"),
         ("The Scout S2 wheel module is a drive wheel with motor that fits left or right",
          "It costs £310"),
         "check the warranty first: wheel motors failing in normal use are covered."),
    Card("Standard support plan", f"{SHOP}/SUP-STD",
         "Email support with a one-business-day response, firmware updates and remote diagnostics. Billed "
         "yearly at £1200 per year.",
         ("What is in the standard support plan?", "how much is basic support", "How fast does standard "
          "support reply?", "is remote diagnostics included"),
         ("The Standard plan gives email support with a one-business-day response",
          "It includes firmware updates and remote diagnostics for £1200 per year"),
         "compare it with the Premium plan if you need phone support."),
    Card("Premium support plan", f"{SHOP}/SUP-PRM",
         "Phone hotline, four-hour response, on-site repairs within two business days and a spare robot pool. "
         "Billed yearly at £2400 per year.",
         ("What do I get with premium support?", "is there on-site repair", "How much is the premium "
          "plan?", "premium support response time"),
         ("The Premium plan has a phone hotline, a four-hour response and a spare robot pool",
          "On-site repairs happen within two business days, for £2400 per year"),
         "ask your account manager to upgrade at your next renewal."),
    Card("Scout S2 stops in the middle of a mission", f"{DESK}/1001",
         "Firmware 4.2.1 fixes the reflector detection. It installs at the next docking; please let us know if "
         "it happens again.",
         ("My Scout stops halfway through a mission", "rover freezes in an aisle after the update", "Why "
          "does the Scout wait in the aisle until pushed?", "scout stuck mid mission"),
         ("Firmware 4.2.1 fixes the reflector detection that stopped rovers mid-mission",
          "It installs at the next docking"),
         "dock the rover and tell support if it happens again."),
    Card("Charged twice for the annual support plan", f"{DESK}/1002",
         "Sorry about that. I can see both payments; the second one is refunded today and takes 3-5 business "
         "days.",
         ("I was charged twice", "duplicate payment for support plan", "When will a double charge be "
          "refunded?", "we paid the invoice two times"),
         ("The duplicate payment is refunded the same day it is found",
          "The refund takes 3-5 business days to arrive"),
         "reply on your ticket if the refund has not arrived after five business days."),
    Card("Invoice needs our VAT number", f"{DESK}/1005",
         "Reissued as INV-2025-0192-A with your VAT number; the original is cancelled.",
         ("Can you add our VAT number to an invoice?", "invoice is missing vat", "How do I get a corrected "
          "invoice?", "we need the invoice reissued"),
         ("Support reissues the invoice with your VAT number under a new number",
          "The original invoice is cancelled"),
         "open a billing ticket with the invoice number and your VAT number."),
    Card("Dock does not charge after power cut", f"{DESK}/1009",
         "Hold the Dock's reset button for 10 seconds until the light blinks blue. It re-runs its self-test "
         "after a power loss.",
         ("The Dock light is orange and it won't charge", "dock not charging after a power cut", "How do I "
          "reset the Dock?", "orange light on the charging station"),
         ("Hold the Dock's reset button for 10 seconds until the light blinks blue",
          "The Dock then re-runs its self-test after the power loss"),
         "open a ticket if the light stays orange after the reset."),
    Card("Can we get an API key for the Fleet API?", f"{DESK}/1010",
         "Create OAuth client credentials in the Fleet app under Settings → API. Credentials are scoped per "
         "site.",
         ("How do I get API access?", "api key for the fleet api", "Can we pull robot status into our "
          "dashboard?", "where do I create api credentials"),
         ("Create OAuth client credentials in the Fleet app under Settings → API",
          "Credentials are scoped per site"),
         "create one set of credentials for each site you want to read."),
    Card("Payment failed for order 77120", f"{DESK}/1011",
         "Yes. Bank details are on the pro-forma invoice attached; the order ships once the transfer arrives, "
         "usually within two days.",
         ("Can I pay by bank transfer?", "my card payment failed", "Where are your bank details?",
          "how to pay without a card"),
         ("You can pay by bank transfer using the details on the pro-forma invoice",
          "The order ships once the transfer arrives, usually within two days"),
         "ask support for the pro-forma invoice if you do not have it."),
    Card("Return policy for a robot bought through a partner", f"{DESK}/1012",
         "Products bought through a partner are returned to that partner within their policy. Our 30-day return "
         "policy applies to orders placed with Acme directly.",
         ("I bought from a reseller, can I return to Acme?", "return a robot bought through a partner",
          "Does the 30-day policy cover partner orders?", "who handles returns for reseller purchases"),
         ("Products bought through a partner go back to that partner under their policy",
          "The 30-day return policy covers orders placed with Acme directly"),
         "contact the partner you bought from to start the return."),
    Card("Warranty claim: Scout wheel motor noise", f"{DESK}/1007",
         "That is covered by the two-year warranty. Please ship it with the RMA; we repair it within 15 "
         "business days and pay shipping both ways.",
         ("My Scout wheel makes a grinding noise", "noisy wheel motor on a 14 month old rover", "Is a "
          "grinding wheel covered?", "scout wheel noise repair"),
         ("A grinding wheel motor on a rover under two years old is covered by the warranty",
          "Acme repairs it within 15 business days and pays shipping both ways"),
         "open a warranty ticket to get an RMA for the rover."),
]


def _hit(i: int, card: Card) -> SearchHit:
    return SearchHit(chunk_id=i, document_id=i, source="acme", external_id=str(i), title=card.title, url=card.url,
                     text=card.evidence, span_start=None, span_end=None, score=1.0)


def _answer(card: Card, n: int, rng: random.Random) -> str:
    bullets = [f"- {fact} [{n}]." for fact in card.bullets]
    if rng.random() < 0.5:
        bullets.reverse()
    return "\n".join([*bullets, f"Next step: {card.next_step}"])


def build(seed: int = 7) -> list[dict[str, object]]:
    rng = random.Random(seed)
    rows = []
    for index, card in enumerate(CARDS):
        others = [c for j, c in enumerate(CARDS) if j != index and c.title != card.title]
        distractors = rng.sample(others, 4)  # one per question, so no two examples share their evidence
        for q, question in enumerate(card.questions):
            shown = [card, distractors[q]]
            rng.shuffle(shown)
            hits = [_hit(i, c) for i, c in enumerate(shown)]
            prompt = build_prompt(question, hits, lambda text: len(text.split()), evidence_tokens=10_000)
            n = shown.index(card) + 1
            messages = [{"role": m.role, "content": m.content} for m in prompt.messages]
            messages.append({"role": "assistant", "content": _answer(card, n, rng)})
            rows.append({"messages": messages})
    rng.shuffle(rows)
    return rows


def main() -> None:
    rows = build()
    path = HERE / "train.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"wrote {len(rows)} examples to {path}")


if __name__ == "__main__":
    main()
