"""grafana/dashboards/wslab.json type-checked against Grafana's own published types.

The npm package @grafana/schema, pinned in tests/dashboard/types/package.json to the Grafana that
compose runs (13.2.3), carries the dashboard and panel types generated from Grafana's schema. This
test writes the dashboard JSON out as TypeScript object literals, each checked with `satisfies`
against its type, and runs the pinned `tsc --strict --noEmit` on it (tests/dashboard/types/
tsconfig.json). Object literals get TypeScript's excess-property check, so a key Grafana's types
don't have fails the test, as does a wrong type or an unknown enum value.

What is checked against what:
- the dashboard: `Dashboard` (templating variables `VariableModel`, annotations, time picker...);
- each row: `RowPanel`;
- each timeseries, heatmap or state-timeline panel: `Panel` with its plugin's own `Options` and
  field-config `custom` type (TimeSeriesPanelCfg, HeatmapPanelCfg, StateTimelinePanelCfg), where
  the generic `Panel` would accept any options at all.

Enums: Grafana's generated types use TypeScript string enums (e.g. `FieldColorModeId`), and a JSON
string such as "palette-classic" is not assignable to one even when it is the enum's value;
`Unenum<T>` (types/unenum.ts) maps every string enum to the union of its values, once,
generically, and changes nothing else.

Where the types are stricter than Grafana, the check is kept and the dashboard follows the types:
- a query variable's `definition` (a display copy of the query that Grafana's editor writes) is
  not in `VariableModel`; the dashboard has none, the query is in `query`;
- the heatmap plugin's `Options.showValue` is required, where Grafana fills in "auto" when it is
  missing; the heatmaps state "auto".
Both change nothing Grafana does, and keeping the check strict is what catches real mistakes.

The dashboard's `schemaVersion` is the one that Grafana writes: the pinned package's
`defaultDashboard.schemaVersion` (42 for 13.2), so Grafana runs no migration on load and an
export from its editor diffs cleanly against the file.

Set-up: `npm ci` in tests/dashboard/types when node_modules is missing or older than
package-lock.json (scripts/test runs the same before the suite).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from dashlib import DASHBOARD, load_dashboard

TYPES = Path(__file__).resolve().parent / "types"
TSC = TYPES / "node_modules" / ".bin" / "tsc"
SCHEMA = TYPES / "node_modules" / "@grafana" / "schema" / "package.json"
# Where the package states the schema version its Grafana writes: `defaultDashboard`.
DEFAULT_DASHBOARD = SCHEMA.parent / "dist" / "esm" / "raw" / "dashboard" / "x" / "types.gen.mjs"

# The panel plugins the dashboard uses: each one's directory in the package and the module of its
# generated types.
PLUGIN_TYPES = {
    "timeseries": ("timeseries", "TimeSeriesPanelCfg"),
    "heatmap": ("heatmap", "HeatmapPanelCfg"),
    "state-timeline": ("statetimeline", "StateTimelinePanelCfg"),
}


def npm_ci() -> None:
    """Install the pinned typescript and @grafana/schema from package-lock.json, if needed."""
    lock = TYPES / "package-lock.json"
    stamp = TYPES / "node_modules" / ".package-lock.json"
    if TSC.is_file() and stamp.is_file() and stamp.stat().st_mtime >= lock.stat().st_mtime:
        return
    npm = shutil.which("npm")
    assert npm, "npm not found: apt-get install npm (node 20 or newer)"
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=TYPES,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"npm ci failed:\n{result.stdout}\n{result.stderr}"


def literal(value) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def with_panels(obj: dict, panel_names: list[str]) -> str:
    """obj as a TypeScript object literal whose "panels" are the named constants."""
    rest = literal({k: v for k, v in obj.items() if k != "panels"})
    return rest[:-1].rstrip() + ',\n  "panels": [' + ", ".join(panel_names) + "]\n}"


def typescript_source(dashboard: dict) -> str:
    """The dashboard as TypeScript: one `satisfies` per panel, one for the whole dashboard."""
    lines = [
        "// Generated from grafana/dashboards/wslab.json by test_dashboard_types.py.",
        "import type { Dashboard, FieldConfig, FieldConfigSource, Panel, RowPanel }"
        " from '@grafana/schema';",
    ]
    for directory, module in PLUGIN_TYPES.values():
        lines.append(
            f"import type * as {module} from '@grafana/schema/dist/esm/raw/composable/"
            f"{directory}/panelcfg/x/{module}_types.gen';"
        )
    lines += [
        "import type { Unenum } from '../unenum';",
        "",
        "// Panel with its plugin's options and field-config `custom` in place of the generic",
        "// Record<string, unknown> (which would accept anything).",
        "type PluginPanel<O, C> = Omit<Panel, 'options' | 'fieldConfig'> & {",
        "  options?: O;",
        "  fieldConfig?: Omit<FieldConfigSource, 'defaults'> & {",
        "    defaults: Omit<FieldConfig, 'custom'> & { custom?: C };",
        "  };",
        "};",
        "",
    ]

    def panel_const(panel: dict) -> str:
        name = f"panel{panel['id']}"
        if panel["type"] == "row":
            # A collapsed row holds its panels: each is checked as a panel of its own first.
            nested = [panel_const(p) for p in panel.get("panels", [])]
            lines.append(
                f"const {name} = {with_panels(panel, nested)} satisfies Unenum<RowPanel>;\n"
            )
            return name
        assert panel["type"] in PLUGIN_TYPES, (
            f"panel {panel['id']}: no types wired up for plugin {panel['type']!r}"
        )
        _directory, module = PLUGIN_TYPES[panel["type"]]
        lines.append(
            f"const {name} = {literal(panel)} satisfies "
            f"Unenum<PluginPanel<{module}.Options, {module}.FieldConfig>>;\n"
        )
        return name

    top = [panel_const(p) for p in dashboard.get("panels", [])]
    lines.append(
        f"export const dashboard = {with_panels(dashboard, top)} satisfies Unenum<Dashboard>;"
    )
    return "\n".join(lines) + "\n"


# Wrong dashboards the check must reject, so a green run means something.
MUTATIONS = {
    "excess_property": lambda d: d["templating"]["list"][0].__setitem__("definition", "x"),
    "wrong_enum_value": lambda d: next(p for p in d["panels"] if p["type"] == "timeseries")[
        "fieldConfig"
    ]["defaults"].__setitem__("color", {"mode": "palette-classics"}),
    "wrong_type": lambda d: d.__setitem__("refresh", 5),
    "unknown_plugin_option": lambda d: next(p for p in d["panels"] if p["type"] == "heatmap")[
        "options"
    ].__setitem__("notAnOption", True),
    "wrong_timeline_option": lambda d: next(
        p for p in d["panels"] if p["type"] == "state-timeline"
    )["options"].__setitem__("showValue", "sometimes"),
}


def run_tsc(dashboards: dict[str, dict]) -> dict[str, list[str]]:
    """Type-check each dashboard (one generated file each, one tsc run); errors by name."""
    build = TYPES / "build"
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir()
    for name, dashboard in dashboards.items():
        (build / f"{name}.ts").write_text(typescript_source(dashboard))
    result = subprocess.run(
        [
            str(TSC),
            "--project",
            str(TYPES / "tsconfig.json"),
            "--strict",
            "--noEmit",
            "--pretty",
            "false",
        ],
        cwd=TYPES,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    errors: dict[str, list[str]] = {name: [] for name in dashboards}
    for line in result.stdout.splitlines():
        m = re.match(r"build/(\w+)\.ts\(\d+,\d+\): error TS", line)
        assert m or not line.startswith(("build/", "error")), line
        if m:
            errors[m.group(1)].append(line)
    # tsc failing without naming one of our files (bad tsconfig, missing module) is a failure.
    assert result.returncode == 0 or any(errors.values()), result.stdout + result.stderr
    return errors


@pytest.fixture(scope="module")
def tsc_errors():
    npm_ci()
    good = load_dashboard()
    dashboards = {"wslab": good}
    for name, mutate in MUTATIONS.items():
        bad = json.loads(json.dumps(good))
        mutate(bad)
        dashboards[name] = bad
    return run_tsc(dashboards)


def test_types_are_pinned_to_the_grafana_compose_runs(tsc_errors):
    compose = yaml.safe_load((DASHBOARD.parents[2] / "compose.yaml").read_text())
    grafana = compose["services"]["grafana"]["image"].split(":")[1]
    package = json.loads((TYPES / "package.json").read_text())
    assert package["devDependencies"]["@grafana/schema"] == grafana
    assert json.loads(SCHEMA.read_text())["version"] == grafana
    # Exact versions only, so package-lock.json and package.json can't disagree.
    for name, version in package["devDependencies"].items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), (name, version)


def test_schema_version_is_the_one_the_pinned_grafana_writes(tsc_errors):
    source = DEFAULT_DASHBOARD.read_text()
    block = re.search(r"const defaultDashboard = \{(.*?)\};", source, re.S)
    assert block, f"no defaultDashboard in {DEFAULT_DASHBOARD}"
    written = int(re.search(r"\bschemaVersion: (\d+)", block.group(1)).group(1))
    assert load_dashboard()["schemaVersion"] == written


def test_dashboard_type_checks_against_grafana_schema(tsc_errors):
    errors = tsc_errors["wslab"]
    assert not errors, f"tsc: {len(errors)} error(s) in build/wslab.ts:\n" + "\n".join(errors)


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_the_check_rejects_a_wrong_dashboard(tsc_errors, mutation):
    assert tsc_errors[mutation], f"tsc accepted a dashboard with a {mutation.replace('_', ' ')}"
