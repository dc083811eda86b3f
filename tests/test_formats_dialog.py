"""File > Import labels / Export labels: any registered format, in a worker, from the open folder."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from deeplab_gui.widgets.dialogs.formats_dialog import LabelsDialog  # noqa: E402
from engine import Status  # noqa: E402

WAIT = 20_000


def test_export_then_import_into_another_folder_through_the_dialog(qtbot, tmp_path, grey_images, sessions):
    src = sessions(grey_images(3, size=(16, 24)))
    mask = np.zeros((16, 24), dtype=np.uint8)
    mask[4:12, 6:18] = 15
    image_id = src.store.ids()[1]
    src.store.save_mask(image_id, mask, status=Status.REVIEWED)
    out = tmp_path / "voc_out"
    dlg = LabelsDialog(src, "export")
    qtbot.addWidget(dlg)
    assert "voc" in dlg.formats and "voc" in [dlg.format_combo.itemData(i) for i in range(dlg.format_combo.count())]
    dlg.set_format("voc")
    dlg.path_edit.setText(str(out))
    with qtbot.waitSignal(dlg.finished_report, timeout=WAIT) as got:
        assert dlg.start() is not None
    assert len(got.args[0].exported) == 1 and (out / "SegmentationClass").is_dir()

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "keep.png").write_bytes((tmp_path / "images" / "img0.png").read_bytes())
    dst = sessions(empty)
    dlg2 = LabelsDialog(dst, "import")
    qtbot.addWidget(dlg2)
    dlg2.set_format("voc")
    dlg2.path_edit.setText(str(out))
    with qtbot.waitSignal(dlg2.finished_report, timeout=WAIT) as got:
        assert dlg2.start() is not None
    report = got.args[0]
    assert len(report.imported) == 1 and "Imported 1" in dlg2.result_label.text()
    qtbot.waitUntil(lambda: len(dst.ids) == 2, timeout=WAIT)   # the rescan put the new image in the list
    new_id = report.imported[0]
    assert (dst.store.load_mask(new_id) == mask).all() and dst.store.status(new_id) is Status.REVIEWED


def test_bad_source_is_one_line_and_writes_nothing(qtbot, tmp_path, grey_images, sessions):
    s = sessions(grey_images(1))
    dlg = LabelsDialog(s, "import")
    qtbot.addWidget(dlg)
    dlg.set_format("voc")
    dlg.path_edit.setText(str(tmp_path / "nowhere"))
    with qtbot.waitSignal(dlg.failed, timeout=WAIT) as got:
        dlg.start()
    assert "\n" not in got.args[0] and "nowhere" in got.args[0]
    assert dlg.result_label.text().startswith("Import failed")
    assert s.store.status(s.store.ids()[0]) is Status.UNLABELED


def test_options_follow_the_format(qtbot, grey_images, sessions):
    s = sessions(grey_images(1))
    dlg = LabelsDialog(s, "import")
    qtbot.addWidget(dlg)
    for i in range(dlg.format_combo.count()):
        dlg.format_combo.setCurrentIndex(i)
        fmt = dlg.fmt
        assert set(dlg.option_widgets) == {o.name for o in fmt.import_options()}
        dlg.option_values()   # defaults are valid values
    with pytest.raises(KeyError):
        dlg.set_format("no-such-format")
