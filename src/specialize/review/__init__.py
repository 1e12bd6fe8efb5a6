"""Blind human review: judgments of paired replies, stored in SQLite, exported as training data.

`items` lists what can be reviewed (a run's evaluated test rows, or logged traffic two models
answered), `store` keeps every pair as shown and every verdict, `session` draws the next pair in
a random order with the names hidden, `summary` turns verdicts into win rates with intervals and
reviewer agreement (eval/human.json), `export` writes DPO, KTO and SFT files checked like any data.
"""
