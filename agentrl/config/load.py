"""Building a `Config`: strict conversion of YAML values to the sections' types, dotted
``key=value`` overrides, the named ``algorithm:`` / ``policy:`` sections, and the layering of
a file over an env's recommended settings (`layer_config`)."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Literal

import yaml

from agentrl.config.checks import cross_checks
from agentrl.config.sections import _DEFAULT_ENV_ID, Config
from agentrl.fields import ConfigError


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _yaml_value(text: str, key: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{key}: {text!r} is not valid YAML ({str(e).splitlines()[0]})"
                          ) from None


def _to_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    raise ConfigError(f"{key}: expected true or false, got {value!r}")


def _to_int(value: Any, key: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise ConfigError(f"{key}: expected an integer, got {value!r} ({type(value).__name__})")


def _to_float(value: Any, key: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    try:
        number = float(value) if isinstance(value, (int, float, str)) else None
    except (ValueError, OverflowError):
        number = None
    if number is not None and not math.isfinite(number):
        raise ConfigError(f"{key}: {value!r} is not a finite number")
    if number is not None:
        return number
    raise ConfigError(f"{key}: expected a number such as 1e-3, got {value!r} "
                      f"({type(value).__name__})")


def _to_str(value: Any, key: str) -> str:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"{key}: expected a string, got {value!r}")


#: scalar annotation -> its converter (value, key) -> value or ConfigError
_SCALARS: dict[Any, Any] = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def _to_union(value: Any, args: tuple[Any, ...], key: str) -> Any:
    """The first member of ``X | Y | None`` that ``value`` converts to."""
    if value is None and type(None) in args:
        return None
    errors = []
    for a in args:
        if a is type(None):
            continue
        try:
            return _coerce(value, a, key)
        except ConfigError as e:
            errors.append(str(e))
    raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")


def _to_literal(value: Any, args: tuple[Any, ...], key: str) -> Any:
    if value not in args:
        hint = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {list(args)}"
                          + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    return value


def _to_list(value: Any, args: tuple[Any, ...], key: str) -> list[Any]:
    if isinstance(value, str):
        value = _yaml_value(value, key) if value.strip().startswith("[") else [value]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key}: expected a list, got {value!r}")
    inner = args[0] if args else Any
    return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]


def _to_dict(value: Any, key: str) -> dict[str, Any]:
    if isinstance(value, str):
        value = _yaml_value(value, key)
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping like {{a: 1}}, got {value!r}")
    return dict(value)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` to annotation ``tp`` or raise a ConfigError naming the key."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        return _to_union(value, args, key)
    if origin is Literal:
        return _to_literal(value, args, key)
    if tp in _SCALARS:
        return _SCALARS[tp](value, key)
    if origin is list:
        return _to_list(value, args, key)
    if origin is dict:
        return _to_dict(value, key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a section (mapping), got {value!r}")
        return build_dataclass(tp, value, key)
    return value


def build_dataclass(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Instantiate dataclass ``cls`` from ``data``, strictly (unknown keys, types, bounds)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in fields:
            hint = difflib.get_close_matches(str(k), list(fields), n=1, cutoff=0.5)
            raise ConfigError(f"unknown key {key!r}"
                              + (f"; did you mean {(prefix + '.' if prefix else '') + hint[0]!r}?"
                                 if hint else f"; valid keys here: {', '.join(fields)}"))
        f = fields[k]
        val = _coerce(v, hints[k], key)
        _check_bounds(val, f.metadata, key)
        kwargs[k] = val
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix or 'config'}: {e}") from e
    return obj


def _check_bounds(val: Any, md: Any, key: str) -> None:
    if not isinstance(val, (int, float)) or isinstance(val, bool):
        return
    checks = [("ge", lambda a, b: a >= b, ">="), ("gt", lambda a, b: a > b, ">"),
              ("le", lambda a, b: a <= b, "<="), ("lt", lambda a, b: a < b, "<")]
    for name, ok, sym in checks:
        bound = md.get(name) if md else None
        if bound is not None and not ok(val, bound):
            raise ConfigError(f"{key}: {val} is out of range; it must be {sym} {bound}")


def _set_dotted(d: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[p] = nxt
        cur = nxt
    cur[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """``["train.lr=1e-3", "env.kwargs={level: 3}"]`` -> [(key, yaml-parsed value)]."""
    out = []
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"override {o!r} must look like key=value (e.g. train.lr=1e-3)")
        k, _, v = o.partition("=")
        k = k.strip()
        if not k:
            raise ConfigError(f"override {o!r} has an empty key")
        try:
            val = yaml.safe_load(v) if v.strip() else ""
        except yaml.YAMLError:
            val = v
        out.append((k, val))
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each ``key=value`` of ``overrides`` in the nested dict ``data`` (in place); returns it."""
    for k, v in parse_overrides(overrides):
        _set_dotted(data, k, v)
    return data


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a `Config` from a nested dict (as loaded from YAML)."""
    from agentrl import policies
    from agentrl.registry import ALGORITHMS, get_algorithm

    data = dict(data or {})
    algo = _section(data, "algorithm", "{name: grpo}")
    name = str(algo.pop("name", "grpo"))
    try:
        algo_cls = get_algorithm(name)
    except KeyError as e:
        raise ConfigError(f"algorithm.name: {e.args[0]}") from e
    pol = _section(data, "policy", "{backend: hf}")
    backend = str(pol.get("backend", policies.PolicyConfig.backend))
    pol = policies.migrate_legacy_keys(pol, backend)
    try:
        pol_cls = policies.backend_config(backend)
    except KeyError as e:
        raise ConfigError(f"policy.backend: {e.args[0]}") from e
    cfg = build_dataclass(Config, data)
    cfg.policy = _named_section("policy", pol, pol_cls, f"backend {backend!r}", "policy.backend",
                                {n: c for n, (_, c) in policies.BACKENDS.items()})
    cfg.algorithm = _named_section("algorithm", algo, algo_cls.Config, f"algorithm {name!r}",
                                   "algorithm.name", {n: c.Config for n, c in ALGORITHMS.items()})
    cfg.algorithm.name = name
    cross_checks(cfg)
    return cfg


def _section(data: dict[str, Any], key: str, example: str) -> dict[str, Any]:
    """``data.pop(key)`` as a dict (absent: empty); anything else is a ConfigError."""
    value = data.pop(key, None) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a section (mapping) like {example}, got {value!r}")
    return dict(value)


def _named_section(section: str, data: dict[str, Any], cls: type, label: str, switch: str,
                   others: dict[str, type]) -> Any:
    """Build ``section`` against ``cls``, the dataclass of what ``switch`` names (``label``).

    An unknown key is often a setting of another algorithm or backend (``others``: name ->
    dataclass), left behind by a ``switch=...`` override: the error then names its owner.
    """
    try:
        return build_dataclass(cls, data, section)
    except ConfigError as e:
        if "unknown key" not in str(e):
            raise
        known = {f.name for f in dataclasses.fields(cls)}
        bad = next((k for k in data if k not in known), None)
        if bad is None:  # the unknown key is inside a nested section (e.g. policy.lora)
            raise ConfigError(f"{e} ({label})") from None
        owners = sorted(n for n, c in others.items()
                        if bad in {f.name for f in dataclasses.fields(c)})
        if owners:
            raise ConfigError(f"{section}.{bad} is a setting of {', '.join(owners)}, not of "
                              f"{label}: remove it or change {switch}") from None
        raise ConfigError(f"{e} ({label})") from None


#: Keys of the ``env`` section that describe one particular env: a config file's values for
#: them are dropped when ``env.id`` is switched to another env (see `layer_config`).
ENV_SPECIFIC_KEYS = ("kwargs", "eval_kwargs", "train_seeds")


def layer_config(file_data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Merge a config file, its ``key=value`` overrides and the env's recommended settings.

    Precedence, lowest first: dataclass defaults < the env's recommended settings < the
    config file < the overrides. The recommended settings (`agentrl.registry.register_env`)
    only take part when the file does not speak for the env being run:

    - the file names ``env.id`` and no override changes it: the file is taken as written;
    - an override picks another env (``agentrl train env.id=X``, e.g. on the quickstart):
      X's recommended settings replace the file's settings for its own env, namely
      ``env.kwargs``, ``env.eval_kwargs``, ``env.train_seeds`` and every key X recommends
      (decoding, action format, turn limit, prompt...); the file's other settings
      (algorithm, training budget, model) are kept;
    - the file names no env: the default env's recommended settings sit under the file.

    Sections merge key by key; a value, including a mapping such as ``env.kwargs``, replaces
    the lower layer's value whole (``env.kwargs.level=3`` sets one key inside it).
    """
    from agentrl.registry import UnknownEnvError, check_env_id, recommended_settings

    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in file_data.items()}
    pairs = parse_overrides(overrides)
    named = isinstance(data.get("env"), dict) and "id" in data["env"]
    file_env = str(data["env"]["id"]) if named else _DEFAULT_ENV_ID
    env_id = file_env
    for k, v in pairs:  # the last override of env.id (or of the whole env section) wins
        if k == "env.id":
            env_id = str(v)
        elif k == "env" and isinstance(v, dict) and "id" in v:
            env_id = str(v["id"])
    try:
        check_env_id(env_id)
    except UnknownEnvError as e:
        raise ConfigError(f"env.id: {e}") from None
    merged: dict[str, Any] = {}
    if env_id != file_env or not named:
        merged = recommended_settings(env_id)
        if env_id != file_env:
            for sec, keys in [("env", ENV_SPECIFIC_KEYS), *merged.items()]:
                if isinstance(data.get(sec), dict):
                    for k in keys:
                        data[sec].pop(k, None)
    for k, v in data.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k].update(v)
        else:
            merged[k] = v
    for k, v in pairs:
        _set_dotted(merged, k, v)
    return merged


#: Config keys whose value may name a plugin, ``"pkg.module:Class"``: its module is imported
#: while the config is validated (algorithm, policy backend) or when the run starts (env pool).
PLUGIN_KEYS = ("algorithm.name", "policy.backend", "env.pool")


def plugin_specs(file_data: dict[str, Any], overrides: list[str]) -> list[tuple[str, str]]:
    """``(key, "pkg.module:Class")`` for each `PLUGIN_KEYS` plugin the file names and no
    override replaces (a registered name holds no ``:``)."""
    given = {k for k, _ in parse_overrides(overrides)}
    found = []
    for key in PLUGIN_KEYS:
        section, _, name = key.partition(".")
        value = file_data.get(section)
        value = value.get(name) if isinstance(value, dict) else None
        if isinstance(value, str) and ":" in value and not given & {key, section}:
            found.append((key, value))
    return found


def _refuse_plugins(path: str, data: dict[str, Any], overrides: list[str]) -> None:
    found = plugin_specs(data, overrides)
    if found:
        key, spec = found[0]
        raise ConfigError(
            f"{path}: {key}={spec!r} is not registered, and loading it would import and run "
            f"the module {spec.partition(':')[0]!r}; a config saved with a run or checkpoint "
            "imports no code unless you pass --trust-plugins (trust_plugins=True)")


def load_config(path: str | None = None, overrides: list[str] | None = None,
                trust_plugins: bool = True) -> Config:
    """Load a YAML config (``None`` = the embedded quickstart) and apply ``key=value``
    overrides, over the recommended settings of the chosen env (`layer_config`).

    ``trust_plugins=False`` is for a config that came with a run or checkpoint rather than
    from the user: a ``"pkg.module:Class"`` plugin it names (`PLUGIN_KEYS`) is refused before
    anything is imported; one set by an override is the user's and loads."""
    if path is None:
        text = _quickstart_text()
        data = yaml.safe_load(text) or {}
    else:
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path!r} not found") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text ({e}); save it as UTF-8") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    if not trust_plugins:
        _refuse_plugins(str(path), data, overrides or [])
    return config_from_dict(layer_config(data, overrides or []))


def _quickstart_text() -> str:
    from importlib.resources import files

    return files("agentrl").joinpath("data/quickstart.yaml").read_text(encoding="utf-8")
