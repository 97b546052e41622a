"""Real NIH ChestX-ray14, Google 2019 and VinDr-CXR tables (shipped in torchxrayvision's wheel)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from activecad.errors import InputError
from activecad.io import cxr_tables as ct


@pytest.fixture(scope="module")
def xrv_data() -> Path:
    xrv = pytest.importorskip("torchxrayvision")
    return Path(xrv.__file__).parent / "data"


def test_real_tables_have_their_published_row_counts(xrv_data: Path) -> None:
    nih = ct.read_nih_data_entry(xrv_data / "Data_Entry_2017_v2020.csv.gz")
    assert len(nih) == ct.NIH_DATA_ENTRY_ROWS == 112_120  # NIH release notes
    assert nih["image_id"].is_unique
    boxes = ct.read_nih_bbox(xrv_data / "BBox_List_2017.csv.gz")
    assert len(boxes) == ct.NIH_BBOX_ROWS == 984
    # NIH's box list: 79 Nodule and 85 Mass boxes.
    counts = boxes["label"].value_counts()
    assert counts["Nodule"] == 79 and counts["Mass"] == 85
    assert (boxes["x2"] > boxes["x1"]).all() and (boxes["y2"] > boxes["y1"]).all()
    google = ct.read_google2019_labels(xrv_data / "google2019_nih-chest-xray-labels.csv.gz")
    assert len(google) == ct.GOOGLE2019_ROWS
    assert google["split"].value_counts().to_dict() == {"val": 2414, "test": 1962}
    vindr = ct.read_vindr_boxes(xrv_data / "vinbigdata-train.csv.gz")
    assert len(vindr) == ct.VINDR_TRAIN_ROWS and vindr["image_id"].nunique() == 15_000
    # Every expert-labelled image is an NIH image.
    assert set(google["image_id"]) <= set(nih["image_id"])

    acc = ct.report_label_accuracy(nih, google)
    assert acc["images"] == len(google)
    # Report mining misses many nodules the experts see, but rarely calls one that is absent.
    assert acc["sensitivity"] < 0.6 < 0.9 < acc["specificity"]
    agree = ct.reader_box_agreement(vindr)
    assert (
        abs(agree["share_support_1"] + agree["share_support_2"] + agree["share_support_3"] - 1)
        < 1e-9
    )


def test_report_label_accuracy_by_hand() -> None:
    import pandas as pd

    nih = pd.DataFrame({"image_id": list("abcd"), "nodule": [1, 0, 0, 0], "mass": [0, 1, 0, 0]})
    expert = pd.DataFrame({"image_id": list("abcd"), "nodule_or_mass": [1, 0, 1, 0]})
    acc = ct.report_label_accuracy(nih, expert)
    # TP=a, FP=b, FN=c, TN=d.
    assert acc["sensitivity"] == 0.5 and acc["specificity"] == 0.5 and acc["ppv"] == 0.5


def test_reader_agreement_by_hand() -> None:
    import pandas as pd

    rows = [  # two readers on one nodule, a third reader's box elsewhere
        ("i", "Nodule/Mass", "R1", 0, 0, 10, 10),
        ("i", "Nodule/Mass", "R2", 1, 1, 11, 11),
        ("i", "Nodule/Mass", "R3", 50, 50, 60, 60),
    ]
    b = pd.DataFrame(rows, columns=["image_id", "label", "rad_id", "x1", "y1", "x2", "y2"])
    a = ct.reader_box_agreement(b)
    assert a["findings"] == 2 and a["share_support_2"] == 0.5 and a["share_images_2plus"] == 1
    assert a["median_side_px"] == 10


def test_node21_table(tmp_path: Path) -> None:
    p = tmp_path / "metadata.csv"
    p.write_text("img_name,x,y,width,height,label\na.png,10,20,30,40,1\nb.png,0,0,0,0,0\n")
    labels, boxes = ct.read_node21_table(p)
    assert labels.set_index("image_id")["label"].to_dict() == {"a": 1, "b": 0}
    np.testing.assert_array_equal(boxes[["x1", "y1", "x2", "y2"]].to_numpy(), [[10, 20, 40, 60]])
    p.write_text("img_name,x,y,width,height,label\na.png,10,20,30,40,2\n")
    with pytest.raises(InputError, match="label must be 0 or 1"):
        ct.read_node21_table(p)


def test_wrong_layout_names_the_fix(tmp_path: Path) -> None:
    p = tmp_path / "x.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="column 'Image Index' is missing"):
        ct.read_nih_data_entry(p)
