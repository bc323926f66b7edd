"""The search side of nanogpt-tune: Ray Tune + Optuna over nanogpt. The only package that imports ray."""
