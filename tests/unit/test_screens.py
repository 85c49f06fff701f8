"""The screens in opi/ and the alarm config name only PVs the IOC serves, and offer every command."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from dmagic_ioc.ioc.tools.pvinfo import ioc_pvs

from ..helpers import REPO, contract_pvs

OPI = REPO / "opi"
SCREENS = sorted([*OPI.glob("*.adl"), *OPI.glob("*.bob"), *OPI.glob("*.ui")])
XML_SCREENS = [path for path in SCREENS if path.suffix in (".bob", ".ui")]
MAIN = ["dmagic.adl", "dmagic.bob", "dmagic.ui"]
# CreateManual lives on the manual screens; PyDM has one screen that holds both.
MANUAL = ["dmagic_manual.adl", "dmagic_manual.bob", "dmagic.ui"]
ALARMS = OPI / "alarms" / "dmagic-alarms.xml"
ALARM_PREFIX = "2bmb:DM:"

PV_NAME = re.compile(r"(?:\$\(P\)|\$\{P\})([A-Za-z0-9_:]+)")

# What the main screens show (the commands are checked separately).
MAIN_PVS = [
    # current proposal and PI
    "ProposalNumber", "ProposalTitle", "UserName", "UserLastName", "UserEmail", "UserInstitution",
    "ProposalActive", "Run", "ESAFNumber", "Users:Names", "TimeOffsetDays", "RefreshPeriod", "TagPrefix",
    # selected experiment and the arguments of its commands
    "ExperimentName", "ExperimentExists", "DataDirectory", "StorageDirectory", "GlobusURL", "ExperimentUsers",
    "EmailedUsers", "Badges", "SelectName", "DeleteConfirm", "EmailMode",
    # data transfer
    "DaqState", "Daq:FilesDone", "Daq:FilesTotal", "Daq:Percent", "Daq:Rate", "Daq:LastFile",
    # status
    "Status", "LastError", "Busy", "Heartbeat", "Version",
    "Scheduling:Health", "DM:Health", "Globus:Health", "Email:Health",
    # catalogue
    "Catalog:Health", "Catalog:Pending", "Catalog:LastDataset", "Metadata:Last",
]  # fmt: skip
MANUAL_PVS = [
    f"Manual:{n}" for n in ("LastName", "FirstName", "Institution", "Email", "Title", "GUP", "Badges", "Start", "End")
]
# The "Scheduled now" line beside the selected experiment's proposal, highlighted by Schedule:Differs.
SCHEDULE_PVS = ["Schedule:ProposalNumber", "Schedule:PI", "Schedule:Differs"]


@pytest.fixture(scope="module")
def pvs() -> dict:
    return {pv.name: pv for pv in ioc_pvs()}


def commands() -> list[str]:
    return [name for name, kind, *_ in contract_pvs() if kind == "command"]


def named_pvs(path: Path) -> set[str]:
    return set(PV_NAME.findall(path.read_text(encoding="utf-8")))


# ------------------------------------------------------------------ per-format readers


def adl_blocks(path: Path) -> list[tuple[str, str]]:
    """(widget type, body) of each top-level MEDM widget."""
    text = path.read_text(encoding="utf-8")
    blocks, depth, start, kind = [], 0, 0, ""
    for match in re.finditer(r'^("[^"\n]+"|[a-z]+) \{$|^\}$', text, re.M):
        if match.group(0) == "}":
            depth -= 1
            if depth == 0:
                blocks.append((kind, text[start : match.end()]))
        else:
            if depth == 0:
                kind, start = match.group(1).strip('"'), match.start()
            depth += 1
    return blocks


def adl_geometry(body: str) -> tuple[int, int, int, int]:
    obj = re.search(r"object \{\s*x=(-?\d+)\s*y=(-?\d+)\s*width=(\d+)\s*height=(\d+)", body)
    return tuple(int(v) for v in obj.groups())


def adl_chan(body: str) -> str | None:
    found = re.search(r'chan="\$\(P\)([^"]+)"', body)
    return found.group(1) if found else None


def buttons(path: Path) -> set[str]:
    """The PVs a button of the screen writes 1 to."""
    if path.suffix == ".adl":
        return {adl_chan(b) for k, b in adl_blocks(path) if k == "message button" and 'press_msg="1"' in b}
    root = ET.parse(path).getroot()
    found = set()
    if path.suffix == ".bob":
        for widget in root.iter("widget"):
            if widget.get("type") != "action_button":
                continue
            pv = widget.findtext("pv_name", "")
            for action in widget.iter("action"):
                target = action.findtext("pv_name", "").replace("$(pv_name)", pv)
                if action.get("type") == "write_pv" and action.findtext("value") == "1":
                    found.update(PV_NAME.findall(target))
        return found
    for widget in root.iter("widget"):
        if widget.get("class") == "PyDMPushButton" and ui_property(widget, "pressValue") == "1":
            found.update(PV_NAME.findall(ui_property(widget, "channel") or ""))
    return found


def ui_property(widget: ET.Element, name: str) -> str | None:
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            return "".join(prop.itertext()).strip()
    return None


def string_formatted(path: Path) -> dict[str, bool]:
    """For each text-showing widget: PV -> whether it shows the value as a string."""
    shown: dict[str, bool] = {}
    if path.suffix == ".adl":
        for kind, body in adl_blocks(path):
            if kind in ("text update", "text entry"):
                shown[adl_chan(body)] = shown.get(adl_chan(body), True) and 'format="string"' in body
    elif path.suffix == ".bob":
        for widget in ET.parse(path).getroot().iter("widget"):
            if widget.get("type") in ("textupdate", "textentry"):
                (name,) = PV_NAME.findall(widget.findtext("pv_name"))
                shown[name] = shown.get(name, True) and widget.findtext("format") == "6"
    else:
        for widget in ET.parse(path).getroot().iter("widget"):
            if widget.get("class") in ("PyDMLabel", "PyDMLineEdit"):
                (name,) = PV_NAME.findall(ui_property(widget, "channel"))
                is_string = (ui_property(widget, "displayFormat") or "").endswith("::String")
                shown[name] = shown.get(name, True) and is_string
    return shown


def overlaps(boxes: list[tuple[str, tuple[int, int, int, int]]]) -> list[tuple[str, str]]:
    clashes = []
    for i, (name_a, (xa, ya, wa, ha)) in enumerate(boxes):
        for name_b, (xb, yb, wb, hb) in boxes[i + 1 :]:
            if xa < xb + wb and xb < xa + wa and ya < yb + hb and yb < ya + ha:
                clashes.append((name_a, name_b))
    return clashes


# ------------------------------------------------------------------ tests


def test_the_screens_are_there():
    assert {path.name for path in SCREENS} >= {"dmagic.adl", "dmagic_manual.adl", "dmagic.bob",
                                                "dmagic_manual.bob", "dmagic.ui"}  # fmt: skip


@pytest.mark.parametrize("path", SCREENS, ids=lambda p: p.name)
def test_every_pv_a_screen_names_exists(path, pvs):
    names = named_pvs(path)
    assert names, f"{path.name} names no $(P)/${{P}} PV"
    assert sorted(names - set(pvs)) == []


@pytest.mark.parametrize("path", SCREENS, ids=lambda p: p.name)
def test_screens_use_the_prefix_macro_only(path):
    text = path.read_text(encoding="utf-8")
    bare = re.findall(r"(?:chan=\"|<pv_name>|ca://)(?!\$\(P\)|\$\{P\}|\$\(pv_name\))([^\"<]*)", text)
    assert bare == []


@pytest.mark.parametrize("path", XML_SCREENS, ids=lambda p: p.name)
def test_xml_screens_are_well_formed(path):
    ET.parse(path)


@pytest.mark.parametrize("name", MAIN)
def test_main_screens_have_a_button_for_every_command(name):
    missing = set(commands()) - {"CreateManual"} - buttons(OPI / name)
    assert sorted(missing) == []


@pytest.mark.parametrize("name", MANUAL)
def test_manual_screens_have_create_manual_and_its_arguments(name):
    assert "CreateManual" in buttons(OPI / name)
    assert sorted(set(MANUAL_PVS) - named_pvs(OPI / name)) == []


@pytest.mark.parametrize("name", MAIN)
def test_main_screens_show_the_proposal_experiment_daq_and_status(name):
    assert sorted(set(MAIN_PVS) - named_pvs(OPI / name)) == []


@pytest.mark.parametrize("name", MAIN)
def test_main_screens_show_what_the_schedule_shows_now(name):
    assert sorted(set(SCHEDULE_PVS) - named_pvs(OPI / name)) == []


@pytest.mark.parametrize("name", MAIN)
def test_the_scheduled_now_line_is_highlighted_by_schedule_differs(name):
    """Schedule:Differs drives the highlight: MEDM shows a background and a note only when it is not zero,
    Phoebus colours the Schedule:* fields by a rule on it, PyDM frames the line alarm-sensitively on it."""
    path = OPI / name
    if path.suffix == ".adl":
        driven = [(k, b) for k, b in adl_blocks(path) if 'vis="if not zero"' in b and adl_chan(b) == "Schedule:Differs"]
        assert {k for k, _ in driven} >= {"rectangle", "text"}
    elif path.suffix == ".bob":
        shown = ("$(P)Schedule:ProposalNumber", "$(P)Schedule:PI")
        widgets = [w for w in ET.parse(path).getroot().iter("widget") if w.findtext("pv_name") in shown]
        assert len(widgets) == 2
        for widget in widgets:
            rules = [
                (rule.get("prop_id"), rule.findtext("pv_name"), rule.find("exp").get("bool_exp"))
                for rule in widget.findall("rules/rule")
            ]
            assert ("background_color", "$(P)Schedule:Differs", "pv0 == 1") in rules, widget.findtext("name")
    else:
        frames = [
            w
            for w in ET.parse(path).getroot().iter("widget")
            if w.get("class") == "PyDMFrame" and ui_property(w, "channel") == "ca://${P}Schedule:Differs"
        ]
        assert frames and any(ui_property(w, "alarmSensitiveBorder") == "true" for w in frames)
        assert all('[alarmSeverity="1"]' in (ui_property(w, "styleSheet") or "") for w in frames)


@pytest.mark.parametrize("path", SCREENS, ids=lambda p: p.name)
def test_char_waveforms_are_shown_as_strings(path, pvs):
    shown = string_formatted(path)
    wrong = [name for name, as_string in shown.items() if pvs[name].kind == "text" and not as_string]
    assert wrong == []


@pytest.mark.parametrize("name", MAIN)
def test_status_is_alarm_sensitive(name):
    path = OPI / name
    if path.suffix == ".adl":
        bodies = [b for k, b in adl_blocks(path) if k == "text update" and adl_chan(b) == "Status"]
        assert bodies and all('clrmod="alarm"' in b for b in bodies)
    elif path.suffix == ".bob":
        widgets = [w for w in ET.parse(path).getroot().iter("widget") if w.findtext("pv_name") == "$(P)Status"]
        assert widgets and all(w.find("rules/rule/pv_name").text == "$(P)Status" for w in widgets)
        assert all(w.findtext("border_alarm_sensitive", "true") == "true" for w in widgets)
    else:
        widgets = [w for w in ET.parse(path).getroot().iter("widget") if ui_property(w, "channel") == "ca://${P}Status"]
        assert widgets and all(ui_property(w, "alarmSensitiveContent") == "true" for w in widgets)


def test_main_screens_open_the_manual_screen():
    adl = [b for k, b in adl_blocks(OPI / "dmagic.adl") if k == "related display"]
    assert any('name="dmagic_manual.adl"' in b and 'args="P=$(P)"' in b for b in adl)
    files = [a.findtext("file") for a in ET.parse(OPI / "dmagic.bob").getroot().iter("action")]
    assert "dmagic_manual.bob" in files


@pytest.mark.parametrize("path", sorted(OPI.glob("*.adl")), ids=lambda p: p.name)
def test_medm_widgets_fit_and_do_not_overlap(path):
    blocks = adl_blocks(path)
    width, height = adl_geometry(dict(blocks)["display"])[2:]
    boxes = [(f"{k} {adl_chan(b) or ''}", adl_geometry(b)) for k, b in blocks if "object {" in b and k != "display"]
    for name, (x, y, w, h) in boxes:
        assert x >= 0 and y >= 0 and x + w <= width and y + h <= height, name
    # Section backgrounds and their titles lie under the widgets by design.
    active = [(n, g) for n, g in boxes if not n.startswith(("rectangle", "text "))]
    assert overlaps(active) == []


@pytest.mark.parametrize("path", sorted(OPI.glob("*.bob")), ids=lambda p: p.name)
def test_phoebus_widgets_fit_and_do_not_overlap(path):
    root = ET.parse(path).getroot()

    def box(widget):
        return tuple(int(widget.findtext(key)) for key in ("x", "y", "width", "height"))

    containers = [root, *(w for w in root.iter("widget") if w.get("type") == "group")]
    for container in containers:
        limit = (int(container.findtext("width")), int(container.findtext("height")))
        children = [(w.findtext("name"), box(w)) for w in container.findall("widget")]
        for name, (x, y, w, h) in children:
            assert x >= 0 and y >= 0 and x + w <= limit[0] and y + h <= limit[1], name
        assert overlaps(children) == []


def test_alarm_config_is_well_formed_and_names_existing_pvs(pvs):
    root = ET.parse(ALARMS).getroot()
    assert root.tag == "config" and root.get("name") == "dmagic"
    names = [pv.get("name") for pv in root.iter("pv")]
    assert all(name.startswith(ALARM_PREFIX) for name in names)
    suffixes = {name[len(ALARM_PREFIX) :] for name in names}
    assert suffixes <= set(pvs)
    wanted = {"Status", "Scheduling:Health", "DM:Health", "Globus:Health", "Email:Health", "Catalog:Health", "DaqState",
              "ProposalActive", "Schedule:Differs"}  # fmt: skip
    assert suffixes == wanted
    for pv in root.iter("pv"):
        for child in ("description", "guidance/details", "display/details", "delay", "latching"):
            assert (pv.findtext(child) or "").strip(), f"{pv.get('name')}: no {child}"
        assert pv.findtext("display/details").split("?")[0].endswith("dmagic.bob")
        assert (OPI / "dmagic.bob").exists()


@pytest.mark.parametrize("name", MAIN)
def test_an_offset_other_than_zero_is_highlighted(name):
    """TimeOffsetDays not 0 makes Refresh and Create look elsewhere than now: MEDM shows a background behind
    the entry when it is not zero, Phoebus colours the entry by a rule, PyDM shows a frame behind it by a rule."""
    path = OPI / name
    if path.suffix == ".adl":
        blocks = adl_blocks(path)
        driven = [i for i, (k, b) in enumerate(blocks) if k == "rectangle" and adl_chan(b) == "TimeOffsetDays"
                  and 'vis="if not zero"' in b]  # fmt: skip
        (entry,) = [i for i, (k, b) in enumerate(blocks) if k == "text entry" and adl_chan(b) == "TimeOffsetDays"]
        assert driven and driven[0] < entry  # drawn first: behind the entry
        x, y, w, h = adl_geometry(blocks[driven[0]][1])
        ex, ey, ew, eh = adl_geometry(blocks[entry][1])
        assert x < ex and y < ey and x + w > ex + ew and y + h > ey + eh  # a frame around it
    elif path.suffix == ".bob":
        (entry,) = [w for w in ET.parse(path).getroot().iter("widget") if w.findtext("pv_name") == "$(P)TimeOffsetDays"]
        rules = [(r.get("prop_id"), r.findtext("pv_name"), r.find("exp").get("bool_exp")) for r in entry.iter("rule")]
        assert rules == [("background_color", "$(P)TimeOffsetDays", "pv0 != 0")]
    else:
        import json

        frames = [w for w in ET.parse(path).getroot().iter("widget") if w.get("name") == "TimeOffsetDays_highlight"]
        (rule,) = json.loads(ui_property(frames[0], "rules"))
        assert (rule["property"], rule["expression"], rule["initial_value"]) == ("Visible", "ch[0] != 0", "False")
        assert rule["channels"] == [{"channel": "ca://${P}TimeOffsetDays", "trigger": True, "use_enum": False}]


# ------------------------------------------------------------------ readable alarms, long text, the picture

# Text that outgrows its field: paths, a proposal title, the outcome of a command.
LONG_TEXT = ["Status", "LastError", "ProposalTitle", "Users:Names", "DataDirectory", "StorageDirectory", "GlobusURL",
             "Daq:LastFile"]  # fmt: skip
SCREENSHOT_PVS = REPO / "docs" / "screenshot-pvs.txt"


def ui_widgets(channel: str) -> list[ET.Element]:
    root = ET.parse(OPI / "dmagic.ui").getroot()
    return [w for w in root.iter("widget") if ui_property(w, "channel") == f"ca://${{P}}{channel}"]


def test_pydm_minor_is_dark_text_on_yellow():
    """PyDM's own MINOR is yellow text on the light grey of a label: the screen puts black text on yellow instead."""
    form = ET.parse(OPI / "dmagic.ui").getroot().find("widget")
    style = ui_property(form, "styleSheet") or ""
    rule = re.search(r'PyDMLabel\[alarmSensitiveContent="true"\]\[alarmSeverity="1"\]\s*\{([^}]*)\}', style)
    assert rule, style
    assert "color: black" in rule.group(1) and "background-color" in rule.group(1), rule.group(0)


@pytest.mark.parametrize("name", LONG_TEXT)
def test_pydm_long_text_wraps_instead_of_being_cut(name):
    (widget,) = ui_widgets(name)
    assert ui_property(widget, "wordWrap") == "true"
    assert widget.find("property/sizepolicy").get("vsizetype") != "Fixed"  # the row grows with the text


@pytest.mark.parametrize("name", ["dmagic.bob", "dmagic_manual.bob"])
def test_phoebus_long_text_shows_whole_in_its_tooltip(name):
    widgets = [w for w in ET.parse(OPI / name).getroot().iter("widget") if w.get("type") == "textupdate"]
    shown = {PV_NAME.findall(w.findtext("pv_name"))[0]: w.findtext("tooltip") or "" for w in widgets}
    assert shown and all("$(pv_value)" in tip for pv, tip in shown.items() if pv in LONG_TEXT)


@pytest.mark.parametrize("path", sorted(OPI.glob("*.adl")), ids=lambda p: p.name)
def test_medm_alarm_coloured_text_sits_on_black(path):
    """MEDM draws alarm-mode text in its alarm colours (yellow for MINOR): on black, not on a light grey."""
    bodies = [b for k, b in adl_blocks(path) if k == "text update" and 'clrmod="alarm"' in b]
    assert bodies and all(re.search(r"\bbclr=14\b", b) for b in bodies)  # 14: black in the screens' colour map


def test_the_screenshot_shows_every_pv_of_the_pydm_screen():
    """docs/screenshot.png pictures the current screen: tools/screenshot.py lists the PVs of the screen it captured."""
    lines = SCREENSHOT_PVS.read_text(encoding="utf-8").splitlines()
    pictured = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    missing = sorted(named_pvs(OPI / "dmagic.ui") - pictured)
    assert missing == [], (
        f"opi/dmagic.ui shows {missing}, which docs/screenshot.png lacks: regenerate the picture with "
        "QT_QPA_PLATFORM=offscreen python tools/screenshot.py --schedule-offset 6"
    )
