"""Write an evaluation report: report.json (every number), report.md, report.html.

The three files are written into a temp directory and swapped in together, so a killed
evaluation never leaves a report whose parts disagree. report.json is the `EvalReport` record
(`specialize.records.eval`), which `RunDir.eval_report()` reads back.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from specialize import format as fmt
from specialize.atomic import make_temp_dir, replace_dir
from specialize.evaluate.html import render_html
from specialize.evaluate.table import (
    Table,
    agreement_lines,
    catch_all_table,
    confidence_table,
    constraint_table,
    human_table,
    learning_curve_table,
    paired_sentence,
    preference_table,
    skipped_lines,
    summary_table,
    worst_table,
)
from specialize.records.eval import EvalReport


def write_report(eval_dir: Path, report: EvalReport) -> None:
    tmp = make_temp_dir(eval_dir)
    try:
        (tmp / "report.json").write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
        (tmp / "report.md").write_text(render_markdown(report), encoding="utf-8")
        (tmp / "report.html").write_text(render_html(report), encoding="utf-8")
        if report.human is not None:  # the directory is swapped whole: keep the review's summary in it
            (tmp / "human.json").write_text(report.human.model_dump_json(indent=2) + "\n", encoding="utf-8")
        replace_dir(tmp, eval_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _markdown_table(table: Table) -> list[str]:
    return [
        "| " + " | ".join(table.columns) + " |",
        "|" + "---|" * len(table.columns),
        *("| " + " | ".join(row) + " |" for row in table.rows),
    ]


def render_markdown(report: EvalReport) -> str:
    lines = [
        f"# Evaluation: {Path(report.run).name}",
        "",
        f"**{report.headline}**",
        "",
        f"Task: {report.task}; {report.test_rows} held-out test rows; greedy decoding, "
        f"max {report.max_new_tokens} new tokens. Price model: {report.price.get('mode')}.",
        "",
        *_markdown_table(summary_table(report)),
    ]
    paired = paired_sentence(report)
    if paired:
        lines += ["", paired]
    lines += [line for skipped in skipped_lines(report) for line in ("", f"*{skipped}*")]
    worst = worst_table(report)
    if worst:
        lines += ["", f"## {worst.title}", "", *_markdown_table(worst)]
    confidence = confidence_table(report)
    if confidence:
        lines += [
            "",
            "## Confidence",
            "",
            "Each reply's probability among all labels (every label scored as a whole reply). ECE: the "
            "row-weighted gap between confidence and accuracy over 15 equal-width bins. Threshold: the "
            "smallest confidence whose kept replies reach the target precision; coverage: the share of "
            "test rows it still answers. Reply = top label: how often the reply is the label the "
            "scorer ranks first.",
            "",
            *_markdown_table(confidence),
        ]
    learning = learning_curve_table(report)
    if learning:
        lines += [
            "",
            f"## {learning.title}",
            "",
            "The same recipe trained on nested subsets of the training rows, scored on the same test "
            "rows; the fitted curve a + b * n^-c says what 2x and 4x the data would give (intervals: "
            "test rows resampled, curve refitted).",
            "",
            *_markdown_table(learning),
        ]
    catch_all = catch_all_table(report)
    if catch_all:
        lines += [
            "",
            f"## {catch_all.title}",
            "",
            "The class for requests outside the others (out of scope, other, none), on its own: "
            "overall accuracy hides it. After: replies below the threshold answer this class instead; "
            "other classes' accuracy: on rows whose reference is another label, before -> after.",
            "",
            *_markdown_table(catch_all),
        ]
    human = human_table(report)
    if human:
        lines += [
            "",
            f"## {human.title}",
            "",
            "Reviewers saw one input and two replies in random order, names hidden. Win rate: the share "
            "of decisive judgments (one side preferred) won by the first of the pair, with its Wilson "
            "95% interval; ties and 'both bad' are counted beside it.",
            "",
            *_markdown_table(human),
            *(line for a in agreement_lines(report) for line in ("", a)),
        ]
    preference = preference_table(report)
    if preference:
        lines += [
            "",
            f"## {preference.title}",
            "",
            "Implicit-reward accuracy: the share of held-out pairs where log p_tuned - log p_parent is "
            "higher for chosen than for rejected (rated replies: positive for a good one, negative for a "
            "bad one). Prefers chosen: the share where a model's own log-probability of chosen is higher; "
            "change and p: McNemar's paired test, tuned vs parent.",
            "",
            *_markdown_table(preference),
        ]
    constrained = constraint_table(report)
    if constrained:
        kind = report.output_contract.get("kind")
        lines += [
            "",
            f"## Under the output contract ({kind})",
            "",
            "Every contender again, decoding so that each reply can only be "
            + ("one of the labels." if kind == "labels" else "JSON valid under the schema.")
            + " Invalid: replies that break the contract; prevented: the share of the free run's invalid "
            "replies that the constraint removed; p50 latency and requests/s as multiples of the free run's.",
            "",
            *_markdown_table(constrained),
        ]
        if not report.contract_verdict.apply_by_default:
            lines += ["", f"**Not applied by default:** {report.contract_verdict.reason}"]
    training = report.training
    lines += [
        "",
        f"Training: {training.method} on {training.examples} examples, "
        f"{fmt.number(training.seconds, 0)} s, cost {fmt.number(training.cost, 4)} USD.",
        "",
    ]
    return "\n".join(lines)
