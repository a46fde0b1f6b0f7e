"""The names of the records server and nodes exchange, in one torch-free place both import."""

from __future__ import annotations

# Instructions (server -> node)
TARGETS = "targets"  # ArrayRecord with the target tensors, sent until a node has them
TARGET_NAMES = "target-names"  # ConfigRecord with their names, sent along
DIGESTS_REQUEST = "clip-digests-salt"  # ConfigRecord {"salt"}, until a node answers
# ConfigRecord {"have": JSON list of node keys whose stats the server holds}: train
# instructions, until a node answers; a node not in "have" replies with RIDGE_STATS
RIDGE_REQUEST = "ridge-request"
# ConfigRecord {"have": JSON list of node keys whose generators the server holds}: KD train
# instructions; a node not in "have" replies with GENERATORS (fed_a2v.federation.distillation)
GENERATOR_REQUEST = "generator-request"
# ConfigRecord {"names", "shapes"}: how the instruction's packed adapters unpack
# (fed_a2v.federation.transport)
ARRAYS_INDEX = "arrays-index"
RIDGE_MAPS = "ridge-maps"  # ArrayRecord {"central", "local.<i>"}: final evaluation only

# Replies (node -> server)
SKIPPED = "skipped"  # ConfigRecord: the unusable audio files, as "path: why"
# ConfigRecord {"key", "name"}: the node's stable key (to count nodes over restarts) and its
# name in the run's records (fed_a2v.federation.node `identify`)
NODE = "node"
DIGESTS = "clip-digests"  # ConfigRecord {"key", "name", "train", "test"} (fed_a2v.data.overlap)
VAL_EXAMPLES = "val-examples"  # evaluate metrics: the val clips behind the `val_*` metrics
STANDALONE = "standalone-adapters"  # ConfigRecord {"path", "rounds"}: a standalone node's own
TRANSPORT = "transport"  # ConfigRecord {"dtype", "scale.<key>"...}: how the adapters travel
IMAGES = "node-images"  # ConfigRecord {"count", "dir"}: images rendered on the node this round
# ArrayRecord {"xtx", "sums", "counts"}: ridge statistics of a node's training clips, once
# (fed_a2v.federation.baselines); not an adapter update
RIDGE_STATS = "ridge-stats"
RIDGE_HITS = "ridge-hits"  # ConfigRecord {"clips", "<map>/<space>": hits}: held-out top-1 hits
# ConfigRecord {"<map>/<space>": sum}: held-out cosines of the maps' predictions to the own target
RIDGE_COSINE = "ridge-cosine"
# ArrayRecord {"<i>.<field>"} and ConfigRecord "<GENERATORS>-classes" {"classes"}: a node's
# per-class generators, once; not an adapter update
GENERATORS = "generators"
CLASS_COUNTS = "class-counts"  # ConfigRecord {"counts": JSON {class: training clips}}: KD
# Reply ArrayRecords that are not the adapter update
SIDE_ARRAYS = (RIDGE_STATS, GENERATORS)
# One-stage rounds (federation.round_protocol): a train instruction's config key naming the
# round whose global adapters the node evaluates before training, and the reply's MetricRecord
# with that evaluation (as an evaluate reply's "metrics")
EVALUATE_ROUND = "evaluate-round"
EVALUATION = "evaluation"
