"""The settings, one module per job (nothing is re-exported here: import a name from its module).

schema     the dataclasses of every section and their defaults; no yaml. The use cases
           (ioc/app) import this module of the package and no other.
load       the YAML file bound onto the schema (unknown keys, types, paths), then the rules; ConfigError.
rules      the checks of loaded settings: any problem refuses the config, at start and at `--check`.
preflight  what `--check` probes on this machine beyond the rules.
"""
