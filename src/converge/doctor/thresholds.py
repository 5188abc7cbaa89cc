"""Every threshold converge doctor uses, in one place. Each check takes them as keyword arguments with
these defaults; tests/test_doctor.py pins them with tables.

| constant | value | meaning |
| --- | --- | --- |
| MAX_ROWS | 20000 | rows read per split for the data checks (a seeded random sample beyond that) |
| MAX_FEATURES | 4096 | flattened input features used by the per-feature checks (a seeded subset beyond that) |
| IMBALANCE_INFO / IMBALANCE_WARN | 1.5 / 3.0 | largest / smallest class count at or above this |
| SCALE_STD_HIGH | 10.0 | a feature whose standard deviation exceeds this is unscaled |
| SCALE_MEAN_HIGH | 10.0 | a feature whose abs(mean) exceeds this (and its std) is uncentred |
| SCALE_STD_LOW | 1e-2 | the median feature std below this: all features squashed |
| SCALE_SPREAD | 100.0 | largest / median feature std above this: one feature dominates |
| CONSTANT_WARN_FRACTION | 0.5 | constant features are `info`; at least this fraction of them is a `warning` |
| OUTLIER_Z | 20.0 | robust z-score abs(x - median) / (1.4826 MAD) above this is an outlier value |
| OUTLIER_WARN_FRACTION | 0.001 | rows holding an outlier value: `warning` at or above this fraction (and OUTLIER_WARN_Z), else `info` |
| OUTLIER_WARN_Z | 50.0 | a `warning` also needs a value this many robust sds out: entry and unit errors are gross, while natural heavy tails reach 20-40 (clean breast cancer: 35) |
| OUTLIER_ZERO_SHARE | 0.25 | a feature that is 0 in at least this share of the rows (padding, sparse counts) takes its median and MAD from its other values |
| OVERLAP_WARN_ROWS | 3 | validation/test rows identical to training rows: `warning` from this many in one split; fewer is `info` (low-resolution data repeats rows by chance: iris, 1 row) |
| MIN_PER_CLASS | 20 | fewer training samples per class is too few |
| MIN_SAMPLES | 50 | fewer training samples (regression) is too few |
| MAX_PARAMS_PER_SAMPLE | 1000 | more trainable parameters per training sample is too few samples |
| MIN_ROWS_PER_FEATURE | 5 | fewer training rows per column of a plain feature matrix [N, F] is too few. Measured (a 2-hidden-layer MLP, AdamW 1e-3, early stopping, 3 seeds): digits with 80 / 160 / 320 / 640 / 1000 training rows (1.2 / 2.5 / 5 / 10 / 16 per feature) reach 0.856 / 0.919 / 0.942 / 0.965 / 0.976 test accuracy; breast cancer with 40 / 80 / 150 / 300 rows (1.3 / 2.7 / 5 / 10 per feature) 0.944 / 0.947 / 0.973 / 0.982; below 5 per feature the same model loses 3 to 12 points to more data. The clean bundled sets have 8 (wine) to 26 (diabetes) per feature |
| NOISE_WARN | 0.05 | estimated label-noise rate (confident learning) at or above this is a `warning` |
| NOISE_MIN_PER_CLASS | 50 | fewer labelled rows per class (on average) and the noise estimate is only `info`: the proxy's own out-of-fold errors are as large as the noise it would find (clean digits with 12 rows per class: 11-15 % "noise") |
| NOISE_FOLDS / NOISE_MAX_ROWS | 4 / 5000 | k-fold trainings of the proxy and the rows they use |
| NOISE_PROXY_SHARE | 0.5 | a noise estimate that would warn is only `info` when the proxy, trained again on the rows it did not flag, errs on more than this share of the estimated rate there: its flags are its own errors (digits, 1350 rows: 10 % / 30 % flipped labels 0.22 / 0.16; clean digits shifted up to 2 px or with pixel noise 0.84 / 1.04; both shifted-noisy and 10 % flipped 0.52) |
| NOISE_OVERLAP_RANK / NOISE_OVERLAP_TOP_SHARE | 0.46 / 0.5 | a noise estimate is only `info` (and flags no rows) when the flagged rows gather where the proxy is unsure: their confidence rank within their predicted class below the first *and* their share of the most confident quarter of rows, over their share of all rows, below the second (overlapping classes, not wrong labels). Measured, 3 data seeds each: labels drawn from a logistic or softmax model (15 cases, 400-2000 rows) rank 0.31-0.45, top share 0.00-0.41 (one 0.66, a weak signal: labels near coin flips everywhere); flipped labels (5-30 %, symmetric or from one class only; two-class, digits, breast cancer; 24 cases) rank 0.44-0.67, top share 0.67-1.55 (one-class flips 0.0, but rank 0.64-0.67); 18 held-out cases set after the thresholds (docs/doctor.md), all read right |
| NOISE_OVERLAP_MIN_FLAGGED | 20 | fewer flagged (or unflagged) rows and where they sit is not judged |
| INIT_LOSS_RATIO | 2.0 | initial loss above this multiple of its expected value |
| OVERFIT_BATCH / OVERFIT_STEPS | 32 / 200 | one batch this big, Adam for at most this many steps (per LR) |
| OVERFIT_LRS | (1e-3, 1e-2) | the learning rates tried in turn |
| OVERFIT_SECONDS | 15 | at most this long per LR; a model slower than that is not judged (info) |
| OVERFIT_RATIO | 0.1 | the loss must fall below this fraction of its start |
| FLOOR_STEPS / FLOOR_HISTORY / FLOOR_ELEMENTS | 200 / 20 / 2,000,000 | when the model fails, the batch's outputs themselves (freed from the model, at most this many values) are moved by L-BFGS for at most this many iterations, remembering this many steps (memory: two copies of the outputs per step): the least loss any outputs reach, a floor the model's loss is judged above (a loss with label smoothing inside cannot fall below its smoothing's entropy) |
| FLOOR_NEGLIGIBLE | 0.01 | a floor of the outputs within this share of the way from the start down to the known floor (0 for most losses) is not used: the bound is as without it |
| VANISHING_RATIO / EXPLODING_RATIO | 1e-3 / 1e3 | first layer's gradient norm / last layer's, below / above |
| EXPLODING_RELATIVE | 100.0 | a layer's gradient norm above this multiple of its weights' norm |
| DEAD_WARN_FRACTION | 0.5 | a ReLU layer with at least this fraction of units never active on a batch |
| MODEL_BATCH | 256 | samples in the batch the model checks use |
"""

MAX_ROWS = 20_000
MAX_FEATURES = 4096
IMBALANCE_INFO = 1.5
IMBALANCE_WARN = 3.0
SCALE_STD_HIGH = 10.0
SCALE_MEAN_HIGH = 10.0
SCALE_STD_LOW = 1e-2
SCALE_SPREAD = 100.0
CONSTANT_WARN_FRACTION = 0.5
OUTLIER_Z = 20.0
OUTLIER_WARN_FRACTION = 0.001
OUTLIER_WARN_Z = 50.0
OUTLIER_ZERO_SHARE = 0.25
OVERLAP_WARN_ROWS = 3
MIN_PER_CLASS = 20
MIN_SAMPLES = 50
MAX_PARAMS_PER_SAMPLE = 1000
MIN_ROWS_PER_FEATURE = 5
NOISE_WARN = 0.05
NOISE_MIN_PER_CLASS = 50
NOISE_FOLDS = 4
NOISE_MAX_ROWS = 5000
NOISE_PROXY_SHARE = 0.5
NOISE_OVERLAP_RANK = 0.46
NOISE_OVERLAP_TOP_SHARE = 0.5
NOISE_OVERLAP_MIN_FLAGGED = 20
INIT_LOSS_RATIO = 2.0
OVERFIT_BATCH = 32
OVERFIT_STEPS = 200
OVERFIT_LRS = (1e-3, 1e-2)
OVERFIT_RATIO = 0.1
FLOOR_STEPS = 200
FLOOR_HISTORY = 20
FLOOR_ELEMENTS = 2_000_000
FLOOR_NEGLIGIBLE = 0.01
VANISHING_RATIO = 1e-3
EXPLODING_RATIO = 1e3
EXPLODING_RELATIVE = 100.0
DEAD_WARN_FRACTION = 0.5
MODEL_BATCH = 256
OVERFIT_SECONDS = 15.0
