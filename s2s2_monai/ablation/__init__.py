"""``s2s2 ablation``: the paper's Table 6 in one command (arms x seeds, in-domain, out-of-domain, corruptions).

Data flow: :mod:`.arms` (what each arm changes in the bundle) -> :mod:`.run` (train each arm x seed with the
bundle, resumable; score each trained model per case and class) -> :mod:`.summary` (means over seeds, paired
bootstrap differences to the baseline, robustness scores) -> :mod:`.report` (ablation.csv / .json / report.html).
"""
