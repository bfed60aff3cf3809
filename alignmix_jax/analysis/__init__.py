"""Evaluation of trained runs: calibration, adversarial robustness and localisation (`report`, with
`calibration`, `attacks`, `wsol`), and pictures of feature mixing (`pictures`, `decoder`)."""
