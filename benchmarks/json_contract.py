"""Free vs constrained decoding on a JSON extraction task: does the inferred output contract help?

    PYTHONPATH=src python benchmarks/json_contract.py [--out DIR] [--train-rows 520] [--test-rows 150]

The data set is made here, by rules, so that it has the shape of issue #13 without copying any
public corpus: smart-home assistant commands ("dim the kitchen lights to 40 percent", "remind me
to call Priya tomorrow at 7:30 am", ...) in 6 intents, each reply a JSON object `{"intent": ...,
"slots": {...}}` with any of 40 optional slot keys, serialised with `json.dumps(sort_keys=True)` as
a typical export would be. Each intent has several surface templates (imperative, polite,
question, terse) with optional fragments, and slot values are drawn from fixed lists, so every
slot value appears verbatim in the request. Some slots hold a small closed set (room, on/off
state, temperature unit), others open-ended values (names, songs, reminder texts, times), so that
the contract's enum inference is tested on both.

The run is driven the way a user drives the tool: the rows are written as jsonl to a fresh
directory with a config whose method/train/eval sections are the Banking77 demo's (1 epoch, sized
for this 2-core CPU), then `python -m specialize check`, `... train` and `... eval`. Printed:
the contract `check` shows; the share of training replies the run's contract accepts (with the
contract an older, first-seen-order inference would give, for comparison); field F1 and exact
match with their 95% bootstrap intervals, free and constrained, for the fine-tuned model and the
few-shot baseline (zero-shot too); the invalid share on both sides; and a RESULT line that says
whether constrained decoding is at least as good as free decoding for the fine-tuned model.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]

# --- the data set ---------------------------------------------------------------------------------

ROOMS = ["kitchen", "living room", "bedroom", "bathroom", "hallway", "office", "garage", "nursery"]
DEVICES = ["lights", "lamp", "fan", "tv", "heater", "dishwasher", "coffee maker", "blinds", "plug"]
STATES = ["on", "off"]
COLORS = ["warm white", "blue", "red", "green", "purple", "orange", "daylight"]
FLOORS = ["upstairs", "downstairs"]
SCENES = ["movie night", "reading", "dinner party", "wake up", "relax", "focus"]
MODES = ["heat", "cool", "auto", "eco"]
UNITS = ["celsius", "fahrenheit"]
FAN_SPEEDS = ["low", "medium", "high"]
ARTISTS = [
    "Nina Simone", "Miles Davis", "Fleetwood Mac", "Bonobo", "Adele", "Radiohead", "Daft Punk",
    "Ella Fitzgerald", "Bob Marley", "Taylor Swift", "Kendrick Lamar", "Björk", "Arctic Monkeys",
    "Norah Jones", "Fela Kuti", "The Beatles", "Billie Eilish", "Queen", "Khruangbin", "Sade",
]  # fmt: skip
SONGS = [
    "Feeling Good", "So What", "Dreams", "Kerala", "Hello", "Creep", "One More Time", "Summertime",
    "Redemption Song", "Shake It Off", "Alright", "Hyperballad", "Do I Wanna Know", "Come Away",
    "Water No Get Enemy", "Let It Be", "Bad Guy", "Bohemian Rhapsody", "Maria Tambien", "Smooth Operator",
]  # fmt: skip
GENRES = ["jazz", "lo-fi", "classical", "reggae", "hip hop", "rock", "ambient", "afrobeat"]
PLAYLISTS = ["morning coffee", "deep focus", "workout mix", "sunday chill", "road trip", "dinner jazz"]
SPEAKERS = ["kitchen speaker", "soundbar", "bedroom speaker", "all speakers"]
SERVICES = ["spotify", "apple music", "tidal", "youtube music"]
PODCASTS = ["The Daily", "Radiolab", "Hardcore History", "99% Invisible", "Planet Money"]
STATIONS = ["BBC Radio 6", "KEXP", "Jazz FM", "NTS"]
PEOPLE = [
    "Priya", "Tomás", "Aisha", "Mei", "Olu", "Sven", "Grandma", "Dr. Patel", "Jonas", "Leila",
    "Kofi", "Hana", "Mateo", "Zoe", "Ravi", "Ingrid", "Yusuf", "Camille", "Dmitri", "Ana",
    "Noah", "Fatima", "Kenji", "Chloe", "Omar", "Sofia", "Lars", "Amara", "Diego", "Nadia",
]  # fmt: skip
TASKS = [
    "call {person}", "pay the electricity bill", "water the plants", "take out the recycling",
    "book a dentist appointment", "send {person} the photos", "pick up {person} from school",
    "renew the car insurance", "buy a birthday card for {person}", "check the oven",
    "charge the laptop", "defrost the chicken", "email {person} about the invoice",
    "return the library books", "feed the cat", "move the car", "cancel the gym membership",
]  # fmt: skip
CITIES = [
    "Lisbon", "Nairobi", "Osaka", "Denver", "Glasgow", "Lagos", "Hanoi", "Montreal", "Seville",
    "Bergen", "Cusco", "Adelaide", "Tbilisi", "Porto", "Kraków", "Dakar", "Busan", "Halifax",
]  # fmt: skip
DATES = ["today", "tomorrow", "tonight", "on Monday", "on Friday", "this weekend", "next Tuesday"]
WEATHER = ["rain", "wind", "snow", "temperature", "humidity", "uv index"]
LISTS = ["shopping list", "groceries", "hardware list", "party list"]
ITEMS = [
    "oat milk", "eggs", "light bulbs", "basil", "batteries", "dish soap", "coffee beans", "rice",
    "tortillas", "lemons", "paper towels", "yogurt", "bin bags", "chickpeas", "sparkling water",
]  # fmt: skip
LABELS = ["laundry", "pasta", "tea", "nap", "pizza", "homework", "meeting", "oven"]
REPEATS = ["every day", "on weekdays", "every Monday", "every weekend"]


def _time(rng: random.Random) -> str:
    hour, minute = rng.randint(1, 12), rng.choice([0, 5, 10, 15, 20, 30, 40, 45, 50])
    return (
        f"{hour}:{minute:02d} {rng.choice(['am', 'pm'])}" if minute else f"{hour} {rng.choice(['am', 'pm'])}"
    )


def _duration(rng: random.Random) -> str:
    n = rng.choice([2, 3, 5, 8, 10, 12, 15, 20, 25, 30, 40, 45, 90])
    return f"{n} {rng.choice(['minutes', 'seconds'])}" if n < 60 else f"{n} minutes"


def _pick(rng: random.Random, p: float) -> bool:
    return rng.random() < p


def _device(rng: random.Random) -> tuple[str, dict[str, str]]:
    slots: dict[str, str] = {"device": "lights" if _pick(rng, 0.35) else rng.choice(DEVICES)}
    if _pick(rng, 0.7):
        slots["room"] = rng.choice(ROOMS)
    if _pick(rng, 0.15):
        slots["floor"] = rng.choice(FLOORS)
    where = f" in the {slots['room']}" if "room" in slots else ""
    where += f" {slots['floor']}" if "floor" in slots else ""
    dev = slots["device"]
    kind = rng.random()
    if dev in ("lights", "lamp") and kind < 0.3:
        slots["brightness"] = f"{rng.choice([10, 20, 25, 30, 40, 50, 60, 75, 80, 100])} percent"
        text = rng.choice(
            [
                f"dim the {dev}{where} to {slots['brightness']}",
                f"set the {dev}{where} to {slots['brightness']} please",
                f"can you put the {dev}{where} at {slots['brightness']}?",
            ]
        )
    elif dev in ("lights", "lamp") and kind < 0.5:
        slots["color"] = rng.choice(COLORS)
        text = rng.choice(
            [f"make the {dev}{where} {slots['color']}", f"change the {dev}{where} to {slots['color']}"]
        )
    elif dev == "tv" and kind < 0.6:
        slots["channel"] = str(rng.randint(1, 60))
        text = rng.choice(
            [f"put the tv{where} on channel {slots['channel']}", f"tv{where} channel {slots['channel']}"]
        )
    elif dev == "blinds" and kind < 0.6:
        slots["position"] = f"{rng.choice([10, 25, 50, 75, 90])} percent"
        text = rng.choice(
            [f"open the blinds{where} {slots['position']}", f"set the blinds{where} to {slots['position']}"]
        )
    elif kind < 0.62:
        slots["scene"] = rng.choice(SCENES)
        slots.pop("device")
        text = rng.choice(
            [
                f"activate the {slots['scene']} scene{where}",
                f"set up {slots['scene']} mode{where}",
                f"start the {slots['scene']} scene{where} please",
            ]
        )
    else:
        slots["state"] = rng.choice(STATES)
        on = slots["state"]
        text = rng.choice(
            [
                f"turn {on} the {dev}{where}",
                f"switch the {dev}{where} {on}",
                f"could you turn the {dev}{where} {on}?",
                f"{dev}{where} {on}",
                f"please switch {on} the {dev}{where}",
            ]
        )
    if _pick(rng, 0.15):
        slots["time"] = _time(rng)
        text += f" at {slots['time']}"
    return text, slots


def _climate(rng: random.Random) -> tuple[str, dict[str, str]]:
    slots: dict[str, str] = {}
    if _pick(rng, 0.5):
        slots["room"] = rng.choice(ROOMS)
    where = f" in the {slots['room']}" if "room" in slots else ""
    kind = rng.random()
    if kind < 0.5:
        slots["temperature"] = str(rng.randint(16, 26) if _pick(rng, 0.7) else rng.randint(60, 78))
        degrees = f"{slots['temperature']} degrees"
        if _pick(rng, 0.5):
            slots["unit"] = "fahrenheit" if int(slots["temperature"]) > 40 else "celsius"
            degrees += f" {slots['unit']}"
        text = rng.choice(
            [
                f"set the thermostat{where} to {degrees}",
                f"make it {degrees}{where}",
                f"heat the house to {degrees}" if not where else f"warm up{where} to {degrees}",
                f"i'd like it to be {degrees}{where}",
            ]
        )
    elif kind < 0.75:
        slots["mode"] = rng.choice(MODES)
        text = rng.choice(
            [f"switch the ac{where} to {slots['mode']} mode", f"put the climate{where} on {slots['mode']}"]
        )
    else:
        slots["fan_speed"] = rng.choice(FAN_SPEEDS)
        text = rng.choice(
            [
                f"set the fan speed{where} to {slots['fan_speed']}",
                f"run the air{where} on {slots['fan_speed']}",
            ]
        )
    if _pick(rng, 0.2):
        slots["humidity"] = f"{rng.choice([35, 40, 45, 50, 55])} percent"
        text += f" and keep humidity at {slots['humidity']}"
    if _pick(rng, 0.15):
        slots["time"] = _time(rng)
        text += f" from {slots['time']}"
    return text, slots


def _media(rng: random.Random) -> tuple[str, dict[str, str]]:
    slots: dict[str, str] = {}
    kind = rng.random()
    if kind < 0.3:
        slots["song"] = rng.choice(SONGS)
        if _pick(rng, 0.6):
            slots["artist"] = rng.choice(ARTISTS)
        by = f" by {slots['artist']}" if "artist" in slots else ""
        text = rng.choice(
            [
                f"play {slots['song']}{by}",
                f"put on {slots['song']}{by}",
                f"i want to hear {slots['song']}{by}",
            ]
        )
    elif kind < 0.45:
        slots["artist"] = rng.choice(ARTISTS)
        text = rng.choice([f"play some {slots['artist']}", f"shuffle {slots['artist']}"])
    elif kind < 0.6:
        slots["genre"] = rng.choice(GENRES)
        text = rng.choice([f"play some {slots['genre']}", f"put on {slots['genre']} music"])
    elif kind < 0.72:
        slots["playlist"] = rng.choice(PLAYLISTS)
        text = rng.choice(
            [f"start my {slots['playlist']} playlist", f"play the {slots['playlist']} playlist"]
        )
    elif kind < 0.86:
        slots["podcast"] = rng.choice(PODCASTS)
        text = rng.choice([f"play the latest {slots['podcast']}", f"resume {slots['podcast']}"])
        if _pick(rng, 0.4):
            slots["episode"] = str(rng.randint(1, 300))
            text = f"play episode {slots['episode']} of {slots['podcast']}"
    else:
        slots["radio_station"] = rng.choice(STATIONS)
        text = rng.choice([f"tune in to {slots['radio_station']}", f"put {slots['radio_station']} on"])
    if _pick(rng, 0.3):
        slots["speaker"] = rng.choice(SPEAKERS)
        text += f" on the {slots['speaker']}"
    if _pick(rng, 0.2):
        slots["service"] = rng.choice(SERVICES)
        text += f" from {slots['service']}"
    if _pick(rng, 0.2):
        slots["volume"] = str(rng.choice([10, 20, 30, 40, 50, 60, 70]))
        text += f" at volume {slots['volume']}"
    return text, slots


def _timer(rng: random.Random) -> tuple[str, dict[str, str]]:
    slots: dict[str, str] = {}
    if _pick(rng, 0.5):
        slots["duration"] = _duration(rng)
        if _pick(rng, 0.5):
            slots["label"] = rng.choice(LABELS)
        name = f" {slots['label']}" if "label" in slots else ""
        text = rng.choice(
            [
                f"set a{name} timer for {slots['duration']}",
                f"start a {slots['duration']}{name} timer",
                f"timer {slots['duration']}",
                f"remind me in {slots['duration']}"
                if not name
                else f"{name.strip()} timer {slots['duration']}",
            ]
        )
    else:
        slots["alarm_time"] = _time(rng)
        text = rng.choice([f"wake me up at {slots['alarm_time']}", f"set an alarm for {slots['alarm_time']}"])
        if _pick(rng, 0.4):
            slots["date"] = rng.choice(DATES)
            text += f" {slots['date']}"
        if _pick(rng, 0.3):
            slots["repeat"] = rng.choice(REPEATS)
            text += f" {slots['repeat']}"
        if _pick(rng, 0.2):
            slots["alarm_sound"] = rng.choice(["birdsong", "chimes", "radio"])
            text += f" with {slots['alarm_sound']}"
    return text, slots


def _reminder(rng: random.Random) -> tuple[str, dict[str, str]]:
    slots: dict[str, str] = {}
    if _pick(rng, 0.35):
        slots["item"] = rng.choice(ITEMS)
        if _pick(rng, 0.4):
            slots["quantity"] = str(rng.randint(2, 6))
        slots["list_name"] = rng.choice(LISTS)
        qty = f"{slots['quantity']} " if "quantity" in slots else ""
        text = rng.choice(
            [
                f"add {qty}{slots['item']} to the {slots['list_name']}",
                f"put {qty}{slots['item']} on my {slots['list_name']}",
                f"we need {qty}{slots['item']}, add it to the {slots['list_name']}",
            ]
        )
        return text, slots
    person = rng.choice(PEOPLE)
    task = rng.choice(TASKS)
    if "{person}" in task:
        slots["person"] = person
        task = task.format(person=person)
    slots["reminder_text"] = task
    text = rng.choice([f"remind me to {task}", f"don't let me forget to {task}", f"reminder: {task}"])
    if _pick(rng, 0.6):
        slots["date"] = rng.choice(DATES)
        text += f" {slots['date']}"
    if _pick(rng, 0.5):
        slots["time"] = _time(rng)
        text += f" at {slots['time']}"
    if _pick(rng, 0.15):
        slots["location"] = rng.choice(["when I get home", "when I leave work", "at the supermarket"])
        text += f" {slots['location']}"
    return text, slots


def _weather(rng: random.Random) -> tuple[str, dict[str, str]]:
    slots: dict[str, str] = {}
    if _pick(rng, 0.6):
        slots["city"] = rng.choice(CITIES)
    if _pick(rng, 0.6):
        slots["date"] = rng.choice(DATES)
    if _pick(rng, 0.5):
        slots["weather_attribute"] = rng.choice(WEATHER)
    where = f" in {slots['city']}" if "city" in slots else ""
    when = f" {slots['date']}" if "date" in slots else ""
    if "weather_attribute" in slots:
        attr = slots["weather_attribute"]
        text = rng.choice(
            [
                f"will there be {attr}{where}{when}?",
                f"what's the {attr} like{where}{when}",
                f"how much {attr}{where}{when}",
            ]
        )
    else:
        text = rng.choice(
            [
                f"what's the weather{where}{when}",
                f"weather forecast{where}{when}",
                f"do I need a coat{where}{when}?",
            ]
        )
    if _pick(rng, 0.1):
        slots["day_period"] = rng.choice(["morning", "afternoon", "evening"])
        text += f" in the {slots['day_period']}"
    return text, slots


INTENTS = {
    "device_control": _device,
    "climate_control": _climate,
    "media_play": _media,
    "timer_alarm": _timer,
    "list_or_reminder": _reminder,
    "weather_query": _weather,
}


def make_rows(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        intent = rng.choice(list(INTENTS))
        text, slots = INTENTS[intent](rng)
        if _pick(rng, 0.25):
            text = rng.choice(["hey, ", "ok ", "hi, ", ""]) + text
        if _pick(rng, 0.3):
            text = text[0].upper() + text[1:]
        reply = json.dumps({"intent": intent, "slots": slots}, sort_keys=True, ensure_ascii=False)
        rows.append({"input": text, "output": reply})
    return rows


# --- the run --------------------------------------------------------------------------------------

CONFIG = """\
# Written by benchmarks/json_contract.py: method/train/eval as examples/banking77/config.yaml
name: json-contract
seed: 42
data:
  train: train.jsonl
  test: test.jsonl
  val_fraction: 0.05
  max_val_examples: 64
  max_test_examples: {test_rows}
model:
  base: smollm2-135m-instruct
  max_seq_len: 192
method:
  kind: lora
  lora_r: 16
  lora_alpha: 32
  lora_dropout: 0.0
train:
  epochs: {epochs}
  batch_size: 16
  learning_rate: 0.001
  eval_every: 25
  early_stopping_patience: 3
eval:
  few_shot_k: 5
  few_shot_selection: similar
  batch_size: 16
  latency_samples: 8
"""


def _cli(*args: str) -> None:
    command = [sys.executable, "-m", "specialize", *args]
    print("$ specialize " + " ".join(args), flush=True)
    began = time.perf_counter()
    result = subprocess.run(command, env=os.environ.copy())
    print(f"  ({time.perf_counter() - began:.0f} s, exit {result.returncode})", flush=True)
    if result.returncode not in (0,):
        raise SystemExit(f"specialize {args[0]} failed with exit code {result.returncode}")


def _first_seen_contract(completions: list[str]):
    """The contract the inference before issue #13 gave (properties in first-seen order, no enums):
    contract.py as it was just before the commit that introduced `key_order`, if this tree has git
    history for it, else None."""
    try:
        fix = subprocess.run(
            [
                "git",
                "-C",
                str(ROOT),
                "log",
                "--reverse",
                "--format=%H",
                "-S",
                "def key_order",
                "--",
                "src/specialize/constrain/contract.py",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        if not fix:
            return None
        source = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{fix[0]}~1:src/specialize/constrain/contract.py"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp()) / "old_contract.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("old_contract", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.infer_contract(completions, "json")


def _accepted(contract, texts: list[str], loaded) -> float:
    from specialize.constrain import OutputContract, compile_constraint
    from specialize.inference import end_of_turn_ids

    contract = OutputContract.from_dict(contract.to_dict())  # the current classes, for any module's
    constraint = compile_constraint(contract, loaded.tokenizer, end_of_turn_ids(loaded))
    tokenizer = loaded.tokenizer
    ok = sum(constraint.accepts(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    return ok / len(texts)


def _ci(quality: dict, name: str) -> str:
    ci = (quality.get("ci95") or {}).get(name)
    value = (quality.get("values") or {}).get(name)
    if ci is None:
        return f"{value:.3f} [n/a]" if value is not None else "n/a"
    return f"{ci['value']:.3f} [{ci['ci_low']:.3f}, {ci['ci_high']:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="Work directory (default: a temp dir).")
    parser.add_argument("--train-rows", type=int, default=520)
    parser.add_argument("--test-rows", type=int, default=150)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument(
        "--report-only", action="store_true", help="Reuse the trained and evaluated run in --out."
    )
    parser.add_argument(
        "--reevaluate",
        action="store_true",
        help="Reuse the trained run in --out: infer its contract again with the current code (the "
        "adapter does not depend on it), evaluate, report.",
    )
    args = parser.parse_args()

    work = args.out or Path(tempfile.mkdtemp(prefix="json-contract-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = make_rows(args.train_rows + args.test_rows, seed=13)
    seen = set()
    train, test = [], []
    for row in rows:  # no test request repeats a training one
        if len(train) < args.train_rows:
            train.append(row)
            seen.add(row["input"].lower())
        elif row["input"].lower() not in seen and len(test) < args.test_rows:
            test.append(row)
    for name, part in (("train.jsonl", train), ("test.jsonl", test)):
        with (work / name).open("w", encoding="utf-8") as handle:
            for row in part:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    (work / "config.yaml").write_text(CONFIG.format(test_rows=args.test_rows, epochs=args.epochs))
    slot_keys = sorted({k for r in train for k in json.loads(r["output"])["slots"]})
    print(
        f"data: {len(train)} train / {len(test)} test rows, {len(INTENTS)} intents, "
        f"{len(slot_keys)} slot keys in train, in {work}",
        flush=True,
    )

    run = work / "run"
    if args.report_only:
        report_only(run, [r["output"] for r in train])
        return
    if args.reevaluate:
        reinfer_contract(run)
        _cli("eval", str(run))
        report_only(run, [r["output"] for r in train])
        return
    _cli("check", str(work / "train.jsonl"), "--test", str(work / "test.jsonl"), "--no-tokens")
    _cli("train", "--config", str(work / "config.yaml"), "--out", str(run))
    _cli("eval", str(run))
    report_only(run, [r["output"] for r in train])


def reinfer_contract(run: Path) -> None:
    """Record the contract the current inference gives for the run's training replies."""
    from specialize.data.contract import training_contract
    from specialize.data.split import load_split
    from specialize.run_dir import RunDir

    run_dir = RunDir(run)
    record = run_dir.record()
    completions = [e.completion or "" for e in load_split(run_dir.split_file("train"))]
    record.output_contract = training_contract(None, completions).to_dict()
    run_dir.write_record(record)
    print("re-inferred the run's output contract with the current code", flush=True)


def report_only(run: Path, train_replies: list[str]) -> None:
    from specialize.constrain import OutputContract
    from specialize.models.load import load_model

    meta = json.loads((run / "run.json").read_text())
    contract = OutputContract.from_dict(meta["output_contract"])
    completions = [
        json.loads(line)["completion"] if "completion" in json.loads(line) else None
        for line in (run / "splits" / "train.jsonl").read_text().splitlines()
        if line.strip()
    ]
    completions = [c for c in completions if c] or train_replies
    loaded = load_model("smollm2-135m-instruct")
    accepted = _accepted(contract, completions, loaded)
    print(f"\nthe run's contract accepts {accepted:.1%} of its {len(completions)} training replies")
    old = _first_seen_contract(completions)
    report = json.loads((run / "eval" / "report.json").read_text())
    tuned = next(c for c in report["contenders"] if c["role"] == "fine-tuned")
    if old is not None:
        print(
            f"the first-seen-order contract (before the fix) would accept {_accepted(old, completions, loaded):.1%} "
            f"of them, and {_accepted(old, tuned['predictions'], loaded):.1%} of the fine-tuned model's free replies"
        )

    print(f"\n{report['test_rows']} test rows; 95% bootstrap intervals")
    print(f"{'contender':16s} {'decoding':12s} {'field F1':24s} {'exact match':24s} invalid")
    for c in report["contenders"]:
        effect = c.get("constrained") or {}
        print(
            f"{c['name']:16s} {'free':12s} {_ci(c['quality'], 'field_f1'):24s} "
            f"{_ci(c['quality'], 'exact_match'):24s} {effect.get('invalid_free', float('nan')):.3f}"
        )
        if effect:
            change = effect.get("primary_change") or {}
            print(
                f"{'':16s} {'constrained':12s} {_ci(effect['quality'], 'field_f1'):24s} "
                f"{_ci(effect['quality'], 'exact_match'):24s} {effect['invalid_constrained']:.3f}"
                f"  (incomplete {effect.get('incomplete')}; F1 change {json.dumps(change)})"
            )
    effect = tuned["constrained"]
    f1_free, f1_con = tuned["quality"]["values"]["field_f1"], effect["quality"]["values"]["field_f1"]
    em_free, em_con = tuned["quality"]["values"]["exact_match"], effect["quality"]["values"]["exact_match"]
    ok = f1_con >= f1_free and em_con >= em_free and effect["invalid_constrained"] == 0
    print(
        f"\nRESULT fine-tuned field F1 free {f1_free:.3f} -> constrained {f1_con:.3f}, exact match "
        f"{em_free:.3f} -> {em_con:.3f}, invalid {effect['invalid_free']:.3f} -> "
        f"{effect['invalid_constrained']:.3f}, contract accepts {accepted:.1%} of training replies: "
        f"{'PASS' if ok else 'FAIL'} (constrained at least as good as free, every reply valid)"
    )


if __name__ == "__main__":
    main()
