"""lm-eval task YAMLs of fcboost (and their ``utils.py`` hooks); a package so installs ship them."""
