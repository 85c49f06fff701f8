"""Bad input is refused before anything changes: the message says why, and no fake and no state moved."""

from __future__ import annotations

import pytest
from dmagic_ioc.ioc.app.messages import (
    AddUser,
    Create,
    CreateManual,
    DaqStart,
    Delete,
    Email,
    Refresh,
    RemoveUser,
    Select,
    Tag,
    Upload,
)
from dmagic_ioc.ioc.app.state import ManualRequest
from dmagic_ioc.ioc.domain.errors import InputError
from dmagic_ioc.ioc.domain.ports import TransferProgress, TransferState

from ..fakes.ports import EXPERIMENT, recorded

NOT_BADGES = "has entries that are not badge numbers"
NO_SELECTION = "no experiment is selected: use Create, CreateManual or Select first"
NO_PROPOSAL = "no beamtime is scheduled now (Schedule:ProposalNumber is empty): Refresh, or use CreateManual"


def nothing_run(beamline) -> None:
    pass


def refreshed(beamline) -> None:
    beamline.run(Refresh(0.0))


def nothing_scheduled(beamline) -> None:
    beamline.run(Refresh(-10.0))


def created(beamline) -> None:
    beamline.run(Refresh(0.0))
    beamline.run(Create())


def transferring(state: TransferState):
    def setup(beamline) -> None:
        created(beamline)
        beamline.adapters.transfer.state = TransferProgress(state=state)

    return setup


def email_off(beamline) -> None:
    created(beamline)
    beamline.adapters.mailer = None


def manual(**fields):
    return lambda beamline: beamline.run(CreateManual(ManualRequest(**fields)))


REFUSALS = {  # what ran before, the command, its refusal
    "create-before-refresh": (nothing_run, lambda b: b.run(Create()), NO_PROPOSAL),
    "create-with-nothing-scheduled": (nothing_scheduled, lambda b: b.run(Create()), NO_PROPOSAL),
    "tag-before-refresh": (nothing_run, lambda b: b.run(Tag("2bmb:TomoScan:")),
                           "no proposal is shown to tag: Refresh, Create, CreateManual or Select first"),
    "tag-blank-prefix": (refreshed, lambda b: b.run(Tag(" \t")),
                         "TagPrefix is empty: set it to the target IOC's prefix, e.g. 2bmb:TomoScan:"),
    "manual-start-not-iso": (refreshed, manual(start="14/10/2026"),
                             "Manual:Start '14/10/2026' is not a date YYYY-MM-DD"),
    "manual-end-no-date": (refreshed, manual(end="2026-13-01"), "Manual:End '2026-13-01' is not a date YYYY-MM-DD"),
    "manual-end-before-start": (refreshed, manual(start="2026-10-05", end="2026-10-01"),
                                "Manual:End 2026-10-01 is not after Manual:Start 2026-10-05"),
    "manual-end-at-start": (refreshed, manual(start="2026-10-05", end="2026-10-05"),
                            "Manual:End 2026-10-05 is not after Manual:Start 2026-10-05"),
    "manual-bad-badge": (refreshed, manual(badges="310012,d1"), f"Manual:Badges {NOT_BADGES}: 'd1'; nothing changed"),
    "select-empty": (created, lambda b: b.run(Select("")), "SelectName is empty"),
    "select-escaping": (created, lambda b: b.run(Select("../etc")),
                        "SelectName '../etc' could escape its folder ('/', '\\', '..' or a leading '.')"),
    "select-unknown": (created, lambda b: b.run(Select("2026-01-Nobody-0")),
                       "no experiment named 2026-01-Nobody-0: Experiments lists the station's experiments"),
    "add-letters": (created, lambda b: b.run(AddUser("12a")), f"Badges {NOT_BADGES}: '12a'; nothing changed"),
    "add-arabic-digits": (created, lambda b: b.run(AddUser("٣١٠٠١١")),
                          f"Badges {NOT_BADGES}: '٣١٠٠١١'; nothing changed"),
    "add-blank": (created, lambda b: b.run(AddUser(" , ")),
                  "Badges is empty: write comma-separated badge numbers, e.g. 310011,310012"),
    "remove-one-bad": (created, lambda b: b.run(RemoveUser("310002,x")), f"Badges {NOT_BADGES}: 'x'; nothing changed"),
    "add-no-selection": (refreshed, lambda b: b.run(AddUser("310011")), NO_SELECTION),
    "remove-no-selection": (refreshed, lambda b: b.run(RemoveUser("310011")), NO_SELECTION),
    "delete-no-selection": (refreshed, lambda b: b.run(Delete("")), NO_SELECTION),
    "email-no-selection": (refreshed, lambda b: b.run(Email(everyone=False)), NO_SELECTION),
    "daq-start-no-selection": (refreshed, lambda b: b.run(DaqStart()), NO_SELECTION),
    "upload-no-selection": (refreshed, lambda b: b.run(Upload()), NO_SELECTION),
    "delete-unconfirmed": (created, lambda b: b.run(Delete(EXPERIMENT.lower())),
                           f"DeleteConfirm must equal ExperimentName ({EXPERIMENT}) to delete it; nothing deleted"),
    "delete-transfer-running": (transferring(TransferState.RUNNING), lambda b: b.run(Delete(EXPERIMENT)),
                                "a transfer is running (or retrying after an error): DaqStop first; nothing deleted"),
    "delete-transfer-retrying": (transferring(TransferState.ERROR), lambda b: b.run(Delete(EXPERIMENT)),
                                 "a transfer is running (or retrying after an error): DaqStop first; nothing deleted"),
    "email-disabled": (email_off, lambda b: b.run(Email(everyone=True)),
                       "e-mail is not enabled (email.enabled: false in the config)"),
}  # fmt: skip


@pytest.mark.parametrize(("before", "command", "refusal"), list(REFUSALS.values()), ids=list(REFUSALS))
def test_bad_input_is_refused_and_changes_nothing(beamline, fakes, before, command, refusal):
    before(beamline)
    held, shown = recorded(fakes), beamline.state
    with pytest.raises(InputError) as refused:
        command(beamline)
    assert str(refused.value) == refusal
    assert recorded(fakes) == held
    assert beamline.state == shown
