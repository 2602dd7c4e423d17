"""The codes of edgeinfer's objects: standard codes for known labels, private ones for the rest."""
from __future__ import annotations

from edgeinfer.dicomout import codes, label_code, priority_code
from edgeinfer.triage import INDETERMINATE


def test_codes():
    assert label_code("pneumothorax") == ("36118008", "SCT", "Pneumothorax")
    assert label_code("Mass") == ("4147007", "SCT", "Mass")
    assert label_code("rib fracture") == ("L_RIB_FRACTURE", "99EDGEINFER", "rib fracture")
    assert label_code("rib-fracture")[0] == "L_RIB_FRACTURE"    # same value: the document tells them apart
    long = label_code("a label much longer than sixteen characters")
    assert long[0].startswith("L") and len(long[0]) == 16 and long[1] == "99EDGEINFER"
    assert label_code("studyscore")[0] != codes._STUDY_SCORE[0]      # labels never take a fixed code
    assert priority_code("STAT") == ("STAT", "99EDGEINFER", "STAT - read immediately")
    assert priority_code(INDETERMINATE)[2] == "Indeterminate - needs a human read"
    assert priority_code("LOW")[0] == "P_LOW"
