"""Upstream's config files read as they are: which format a file is in, and the translation of
its keys (`fed_a2v.config.overrides` applies `--set`, `fed_a2v.config.convert` writes a file).

A raw JSON object becomes FedA2V's own (native) one here, before `config_from_dict` builds it.
A file is upstream's when it has `federation.algorithm` or a `model` section; then upstream's
defaults apply and its 0-based fold lists are shifted. Every upstream key has a row in
`fed_a2v.config.upstream_keys` saying what happens to it; docs/upstream-config.md shows that table.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import typing
from typing import Any

from fed_a2v.config.feda2v_section import GENERATOR_GRANULARITIES, GENERATOR_KINDS
from fed_a2v.config.field_rules import ConfigError
from fed_a2v.config.key_paths import (
    dataset_kind,
    is_metadata,
    is_native,
    native_fields,
    pattern_of,
    unknown_key,
    value_at,
)
from fed_a2v.config.schema import DATASETS, SCHEMA_KEY, Config
from fed_a2v.config.translation import Change, Translation
from fed_a2v.config.upstream_defaults import FLUX, SD, UPSTREAM_DEFAULTS
from fed_a2v.config.upstream_keys import (
    ALWAYS,
    GAUSSIAN,
    IMPLEMENTED,
    KD_DOC,
    MAPPED,
    REASONS,
    TABLE,
    Key,
)

log = logging.getLogger("fed_a2v.config")

UPSTREAM_SPELLING = "ESC50, VEGAS, VGGSound, MIXED"
FOLD_KEYS = ("train_folds", "val_folds", "test_folds", "use_folds")


def is_upstream(raw: Any) -> bool:
    """Upstream's files all have `federation.algorithm` and a `model` section; ours neither."""
    if not isinstance(raw, dict):
        return False
    federation = raw.get("federation")
    return "model" in raw or (isinstance(federation, dict) and "algorithm" in federation)


class _Translator:
    def __init__(self, raw: dict[str, Any], source: str, upstream: bool) -> None:
        self.raw, self.t = raw, Translation(source, upstream)
        self.device: dict[str, Any] = {}
        self.dropouts: dict[str, Any] = {}
        self.granularities: dict[str, Any] = {}  # nodes.*.generator_granularity, by node
        self.switches: list[str] = []  # feda2v bool keys that upstream's synonyms turn on
        self.folds: list[tuple[str, list[Any]]] = []
        self.num_clients: list[Any] = []  # the file's federation.num_clients, if it has one

    def put(self, path: str, value: Any) -> None:
        *parents, last = path.split(".")
        node = self.t.native
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    def run(self) -> Translation:
        for section, body in self.raw.items():
            if section == SCHEMA_KEY:
                continue  # the file's JSON Schema, for editors (docs/experiment.schema.json)
            if is_metadata(section):
                self.t.metadata += 1
            elif section == "nodes" and isinstance(body, dict):
                self.nodes(body)
            elif isinstance(body, dict) and (native_fields([section, ""]) is not None
                                             or any(p.startswith(f"{section}.") for p in TABLE)):
                for key, value in body.items():
                    if is_metadata(key):
                        self.t.metadata += 1
                    else:
                        self.key(f"{section}.{key}", value)
            elif section in (native_fields([""]) or []):
                self.t.native[section] = body  # a bad value: config_from_dict says what is wrong
            else:
                raise unknown_key(section, self.t.source)
        self.finish_device()
        self.finish_generators()
        if self.t.upstream:
            self.finish_upstream()
        return self.t

    def nodes(self, body: dict[str, Any]) -> None:
        out = self.t.native.setdefault("nodes", {})
        for node_id, entry in body.items():
            if is_metadata(node_id) or isinstance(entry, str):
                self.t.metadata += 1  # upstream writes comments between the nodes
                continue
            if not isinstance(entry, dict):
                out[node_id] = entry
                continue
            out[node_id] = {}
            for key, value in entry.items():
                if is_metadata(key):
                    self.t.metadata += 1
                else:
                    self.key(f"nodes.{node_id}.{key}", value)
        if self.dropouts:
            self.finish_dropout(list(out))

    def key(self, path: str, value: Any) -> None:
        pattern = pattern_of(path)
        row, native = TABLE.get(pattern), is_native(path)
        if row is None or (native and not self.t.upstream):
            if not native:
                raise unknown_key(path, self.t.source)
            if pattern in ("dataset.name", "nodes.*.dataset") and dataset_kind(value):
                value = dataset_kind(value)
            if self.t.upstream and pattern.split(".")[-1] in FOLD_KEYS:
                value = self.shift(path, value)
            self.put(path, value)
        elif row.status == IMPLEMENTED:
            wins = value_at(self.raw, "federation.diffusion_type")
            if path == "feda2v.diffusion_type" and wins is not None:
                if wins != value:  # upstream's server read federation's first
                    self.t.mapped.append(Change(path, value, path, wins,
                                                "`federation.diffusion_type` wins, as upstream"))
                return
            self.put(path, value)
        elif row.status == MAPPED:
            if row.to.startswith("@"):
                getattr(self, "map_" + row.to[1:])(path, value, row)
            else:
                target = row.to.replace("*", path.split(".")[1])
                self.put(target, value)
                self.t.mapped.append(Change(path, value, target, value, "FedA2V's name for it"))
        elif self.asks(row, value):
            self.t.unsupported.append((path, value, row.reason))
        else:
            self.t.dropped.append((path, value, REASONS[row.reason][1] if row.inert == ALWAYS
                                   else "this value asks for nothing (other values would: "
                                        f"{REASONS[row.reason][0]}, not supported)"))

    def asks(self, row: Key, value: Any) -> bool:
        """A not-supported key asks for something: its value, and a gate key's where it has."""
        if row.is_inert(value):
            return False
        for gate in row.when:
            path, _, want = gate.partition("=")
            got = value_at(self.raw, path)
            if (got == want) if want else (got is not None and not TABLE[path].is_inert(got)):
                return True
        return not row.when

    # --- mapped keys: one method per `@name` of the table ---------------------------------

    def map_drop(self, path: str, value: Any, row: Key) -> None:
        self.t.mapped.append(Change(path, value, "", None, row.does))

    def map_num_clients(self, path: str, value: Any, row: Key) -> None:
        self.num_clients.append(value)  # the nodes decide, in finish_upstream

    def map_device(self, path: str, value: Any, row: Key) -> None:
        self.device[path.split(".")[1]] = value

    def map_seed(self, path: str, value: Any, row: Key) -> None:
        if value != -1:
            self.put("experiment.seed", value)
            return
        seed = Config().experiment.seed
        self.t.mapped.append(Change(path, value, path, seed, "upstream's -1 means unseeded; "
                                    f"FedA2V always seeds, with its default {seed}"))

    def map_optimizer(self, path: str, value: Any, row: Key) -> None:
        if str(value).lower() != "adamw":
            self.t.unsupported.append((path, value, "optimizer"))
        elif value != "AdamW":
            self.t.mapped.append(Change(path, value, path, "AdamW", "FedA2V's spelling"))
        self.put("training.optimizer", "AdamW")

    def map_aggregation(self, path: str, value: Any, row: Key) -> None:
        if value == "kd":
            self.t.mapped.append(Change(path, value, path, value, "FedAvg, then distilled on "
                                        "samples of the nodes' per-class generators; a class's "
                                        "teacher: the nodes that hold it (upstream's, every "
                                        f"node: `feda2v.kd_teacher` \"all_nodes\"; {KD_DOC})"))
        self.put(path, value)

    def map_generator_type(self, path: str, value: Any, row: Key) -> None:
        if value in GENERATOR_KINDS:  # FedA2V's own (a --set on an upstream file)
            self.put(path, value)
            return
        self.put(path, "gaussian")
        self.t.mapped.append(Change(path, value, path, "gaussian", GAUSSIAN))

    def _switch(self, path: str, value: Any, target: str, why: str) -> None:
        """Upstream's synonym of a FedA2V switch: true turns `target` on (whatever the file
        says of `target`, as upstream read either); false asks nothing."""
        if not isinstance(value, bool) and value is not None:
            raise ConfigError(f"{self.t.source}: '{path}' must be true or false")
        if value:
            self.switches.append(target)  # set in finish_generators, after the file's own
            self.t.mapped.append(Change(path, value, target, True, why))

    def map_only_mode(self, path: str, value: Any, row: Key) -> None:
        self._switch(path, value, "feda2v.generator_training_mode",
                     "nodes fit their generators and train no adapters")

    def map_pretrained(self, path: str, value: Any, row: Key) -> None:
        self._switch(path, value, "feda2v.generator_load_checkpoint",
                     "the server starts from the generators saved in "
                     "`feda2v.generator_checkpoint_dir`")

    def map_class_groups(self, path: str, value: Any, row: Key) -> None:
        self.put(path, {} if value is None else value)  # upstream's null: no groups

    def map_synthetic_samples(self, path: str, value: Any, row: Key) -> None:
        target = "feda2v.kd_samples_per_class"
        if value is None or value == "auto":
            self.t.dropped.append((path, value, "upstream's default (the nodes chose a count "
                                   f"from their data); FedA2V distils on `{target}`"))
        elif not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{self.t.source}: '{path}' must be an integer or \"auto\"")
        elif value_at(self.raw, target) is not None:
            self.t.mapped.append(Change(path, value, "", None, f"the file's own `{target}` "
                                        f"({json.dumps(value_at(self.raw, target))}) wins"))
        else:
            self.put(target, value)
            self.t.mapped.append(Change(path, value, target, value, "generated samples of "
                                        "each class the server distils on"))

    def map_node_granularity(self, path: str, value: Any, row: Key) -> None:
        if value not in GENERATOR_GRANULARITIES:
            raise ConfigError(f"{self.t.source}: '{path}' must be one of "
                              f"{', '.join(GENERATOR_GRANULARITIES)}, not {json.dumps(value)}")
        self.granularities[path.split(".")[1]] = value  # recorded in finish_generators

    def map_dataset_name(self, path: str, value: Any, row: Key) -> None:
        # Upstream's files: recorded in finish_dataset, once the nodes have named their corpora.
        if dataset_kind(value):
            self.put(path, dataset_kind(value))
        elif not self.t.upstream:
            self.put(path, value)  # a native file: config_from_dict names the allowed values
        else:
            self.put(path, None)  # decided from the nodes in finish_upstream

    def map_node_dataset(self, path: str, value: Any, row: Key) -> None:
        if not dataset_kind(value) or dataset_kind(value) == "mixed":
            raise ConfigError(f"{self.t.source}: '{path}': {json.dumps(value)} is no corpus; "
                              f"use one of {UPSTREAM_SPELLING[:-7]} (any case) or "
                              f"{', '.join(DATASETS)}")
        self.put(path, dataset_kind(value))
        if value != dataset_kind(value):
            self.t.mapped.append(Change(path, value, path, dataset_kind(value),
                                        "FedA2V's spelling"))

    def map_folds(self, path: str, value: Any, row: Key) -> None:
        self.put(path, self.shift(path, value) if self.t.upstream else value)

    def shift(self, path: str, value: Any) -> Any:
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                  for v in value):
            return value
        self.folds.append((path, value))
        shifted = [v + 1 for v in value]
        if value:
            self.t.mapped.append(Change(path, value, path, shifted, "upstream numbers folds "
                                        "from 0, FedA2V as the corpus does (ESC-50: from 1)"))
        return shifted

    def map_node_dropout(self, path: str, value: Any, row: Key) -> None:
        self.dropouts[path.split(".")[1]] = value  # recorded in finish_dropout

    # --- after every key ------------------------------------------------------------------

    def finish_dropout(self, node_ids: list[str]) -> None:
        values = [self.dropouts.get(n, 0.0) for n in node_ids]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            bad = next(n for n in node_ids if n in self.dropouts
                       and not isinstance(self.dropouts[n], (int, float)))
            raise ConfigError(f"{self.t.source}: 'nodes.{bad}.adapter_dropout' must be a number")
        if len(set(values)) > 1:
            for node_id, value in self.dropouts.items():
                self.t.unsupported.append((f"nodes.{node_id}.adapter_dropout", value,
                                           "node_adapter"))
        own = value_at(self.raw, "feda2v.adapter_dropout")
        if own is None:
            own = float(max(values))
            self.put("feda2v.adapter_dropout", own)
            why = ("FedA2V's key for it (one value for every node)" if len(set(values)) == 1
                   else f"the nodes differ ({', '.join(map(str, values))}): the largest, for "
                        "every node")
        else:
            why = "the file's own `feda2v.adapter_dropout`, for every node"
        for node_id, value in self.dropouts.items():
            self.t.mapped.append(Change(f"nodes.{node_id}.adapter_dropout", value,
                                        "feda2v.adapter_dropout", own, why))

    def finish_generators(self) -> None:
        """Upstream's synonyms turned on, and its per-node generator granularities: FedA2V has
        one granularity for every node."""
        for target in self.switches:
            self.put(target, True)
        if not self.granularities:
            return
        key = "feda2v.generator_granularity"
        own = value_at(self.raw, key)
        fallback = Config().feda2v.generator_granularity if own is None else own
        nodes = [n for n, e in self.t.native.get("nodes", {}).items() if isinstance(e, dict)]
        values = {n: self.granularities.get(n, fallback) for n in nodes}
        same = len(set(values.values())) == 1
        result = next(iter(values.values())) if same else "per_class"
        self.put(key, result)
        why = ("FedA2V's key for it (one value for every node)" if same else
               "the nodes differ (" + ", ".join(f"{n}: {v}" for n, v in values.items())
               + "): per_class for every node (no class shares a generator's directions)")
        for node_id, value in self.granularities.items():
            self.t.mapped.append(Change(f"nodes.{node_id}.generator_granularity", value, key,
                                        result, why))
        if own is not None and own != result:
            self.t.mapped.append(Change(key, own, key, result, "the nodes' own "
                                        "generator_granularity decide (upstream: a node's "
                                        "wins for that node)"))

    def finish_device(self) -> None:
        if not self.device:
            return
        device = str(self.device.get("device", value_at(self.raw, "experiment.device") or "cuda"))
        if device == "cuda":
            device = f"cuda:{self.device.get('device_id', 0)}"
        self.put("experiment.device", device)
        given, index = self.device.get("device"), self.device.get("device_id")
        shown = json.dumps(index)
        if given is None:
            self.t.mapped.append(Change("experiment.device_id", index, "experiment.device",
                                        device, "upstream's device, cuda, on this GPU"))
        elif given != device:
            self.t.mapped.append(Change(
                "experiment.device", given, "experiment.device", device,
                f"with `experiment.device_id` = {shown}" if index is not None
                else "upstream's GPU 0 (no `experiment.device_id`)"))
        elif index is not None:
            self.t.mapped.append(Change("experiment.device_id", index, "", None,
                                        f"`experiment.device` \"{device}\" names no GPU index"))

    def default(self, path: str, value: Any, why: str) -> None:
        section, key = path.split(".")
        if key not in self.t.native.get(section, {}):
            self.put(path, value)
            self.t.defaults.append((path, value, why))

    def finish_upstream(self) -> None:
        nodes = {k: v for k, v in self.t.native.get("nodes", {}).items() if isinstance(v, dict)}
        types = {n.get("diffusion_type") for n in nodes.values()} - {None}
        if len(types) == 1:  # nodes that agree say what a file without a global type means
            self.default("feda2v.diffusion_type", types.pop(),
                         "the `diffusion_type` every node gives")
        own = Config().to_dict()
        for path, value in UPSTREAM_DEFAULTS.items():
            section, key = path.split(".")
            if value == own[section][key]:  # explicit, so a later FedA2V default cannot move it
                self.default(path, copy.deepcopy(value), "")
                self.t.defaults = [d for d in self.t.defaults if d[0] != path]
            else:
                self.default(path, copy.deepcopy(value), "upstream's default (FedA2V's own: "
                             f"{_own_default(section, key)})")
        self.finish_dataset(nodes)
        ds, fed = self.t.native["dataset"], self.t.native.setdefault("federation", {})
        for node_id, node in nodes.items():
            self.finish_vggsound(node_id, node, ds)
        self.finish_num_clients(len(nodes))
        join, count = fed.get("join_ratio", 1.0), fed.get("num_clients")
        if _numbers(join) and isinstance(count, int):
            self.default("federation.min_clients", max(1, round(join * count)),
                         f"max(1, round(join_ratio {join} x {count} nodes))")
        self.finish_models()
        fa = self.t.native["feda2v"]
        if fa.get("adapter_load_checkpoint") is True and fa["adapter_aggregation_mode"] == "none":
            self.t.unsupported.append(("feda2v.adapter_load_checkpoint", True, "standalone_load"))
            fa["adapter_load_checkpoint"] = False
        frequency = fa.get("generate_nodes_images_frequency")
        if frequency and fa["diffusion_type"] != "flux":
            self.t.unsupported.append(("feda2v.generate_nodes_images_frequency", frequency,
                                       "sd_images"))
            fa["generate_nodes_images_frequency"] = 0
        if self.folds and not any(0 in v for _, v in self.folds):
            lists = ", ".join(f"{p}={v}" for p, v in self.folds)
            self.t.warnings.append(
                f"{self.t.source}: fold lists without a 0 could be meant either way ({lists}); "
                "read as upstream's 0-based folds: upstream fold k = corpus fold k+1 (ESC-50's "
                "CSV folds 1-5). To give the corpus's own numbers, write the file in FedA2V's "
                "format (no federation.algorithm, no model section; `fed-a2v convert`)")

    def finish_num_clients(self, count: int) -> None:
        """Upstream overwrote `federation.num_clients` with the number of `nodes` entries."""
        path = "federation.num_clients"
        if count:
            self.default(path, count, f"the file's {count} `nodes` entries")
        for value in self.num_clients:
            if not count:
                self.t.mapped.append(Change(path, value, "", None, "ignored: upstream counted "
                                            "the `nodes` entries, and the file has none"))
            elif value != count:
                self.t.mapped.append(Change(path, value, path, count, f"the file's {count} "
                                            "`nodes` entries decide, as upstream"))
        if self.num_clients:  # the file has the key: its line above, not a default
            self.t.defaults = [d for d in self.t.defaults if d[0] != path]

    def finish_dataset(self, nodes: dict[str, dict[str, Any]]) -> None:
        """dataset.name: the kind every node names, else mixed (upstream decided per node)."""
        ds = self.t.native["dataset"]
        fallback = ds.get("name")
        kinds = {n.get("dataset", fallback) for n in nodes.values()} or {fallback}
        if None in kinds:
            given = value_at(self.raw, "dataset.name")
            raise ConfigError(
                f"{self.t.source}: 'dataset.name' ({json.dumps(given)}) names no corpus, and "
                + ("nodes without 'dataset' need it" if nodes else "there are no nodes")
                + f"; use one of {UPSTREAM_SPELLING} (any case)")
        if len(kinds) > 1:
            for node in nodes.values():
                node.setdefault("dataset", fallback)
        read = ", ".join(sorted(kinds))
        name = kinds.pop() if len(kinds) == 1 else "mixed"
        given = value_at(self.raw, "dataset.name")
        why = (f"its nodes read {read}" if name == "mixed" and fallback != "mixed"
               else "FedA2V's spelling" if name == dataset_kind(given)
               else f"every node reads {name} (upstream's nodes name their corpus)")
        if given is None:
            self.t.defaults.append(("dataset.name", name, why))
        elif given != name:
            self.t.mapped.append(Change("dataset.name", given, "dataset.name", name, why))
        ds["name"] = name

    def finish_vggsound(self, node_id: str, node: dict[str, Any], ds: dict[str, Any]) -> None:
        """Upstream split VGGSound nodes 0.7 / 0.1 / 0.2 unless told otherwise (others: 0.8 /
        0.1 / what is left, FedA2V's own rule for an unset test_ratio)."""
        if node.get("dataset", ds.get("name")) != "vggsound":
            return
        for key, value in (("train_ratio", 0.7), ("val_ratio", 0.1), ("test_ratio", 0.2)):
            if key not in node and value_at(self.raw, f"dataset.{key}") is None:
                node[key] = value
                self.t.defaults.append((f"nodes.{node_id}.{key}", value, "upstream split "
                                        "VGGSound nodes 0.7 / 0.1 / 0.2"))

    def finish_models(self) -> None:
        """Upstream's real encoders: the AST, and FLUX's or Stable Diffusion's text encoders."""
        fa = self.t.native["feda2v"]
        kind = fa.get("diffusion_type")
        if "clip_model_name" not in fa:
            why = f"upstream's CLIP text encoder for diffusion_type {kind}"
            if kind == "sd":
                for key, value in (("clip_model_name", SD), ("clip_model_subfolder",
                                   "text_encoder"), ("clip_tokenizer_subfolder", "tokenizer")):
                    self.default(f"feda2v.{key}", value, why)
            else:
                self.default("feda2v.clip_model_name", FLUX, why)
                self.default("feda2v.clip_model_subfolder", "text_encoder", why)
        if "t5_model_name" not in fa:
            why = "upstream's T5 text encoder, FLUX.1-schnell's"
            self.default("feda2v.t5_model_name", FLUX, why)
            self.default("feda2v.t5_model_subfolder", "text_encoder_2", why)


def _own_default(section: str, key: str) -> str:
    """FedA2V's default of `section.key` in words, as the configuration reference shows it."""
    cls = typing.get_type_hints(Config)[section]
    f = next(f for f in dataclasses.fields(cls) if f.name == key)
    if "shown_default" in f.metadata:
        return f.metadata["shown_default"]
    return json.dumps(getattr(cls(), key))


def _numbers(*values: Any) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def translate(raw: Any, source: str, upstream: bool | None = None) -> Translation:
    """The native dict of a raw config (`upstream`: its profile; None: decide from `raw`)."""
    upstream = is_upstream(raw) if upstream is None else upstream
    if not isinstance(raw, dict):
        return Translation(source, upstream, native=raw)
    return _Translator(raw, source, upstream).run()
