"""The viewer's overlays change what is on screen; clicks and boxes give heatmaps and region searches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from PySide6.QtCore import QPoint, QSettings, Qt
from PySide6.QtGui import QImage, QPainter

from app.gui.model_service import ModelService
from app.gui.widgets.viewer import Viewer
from app.gui.workers import TaskRunner
from tests.helpers import tiny_backbone


@pytest.fixture
def viewer(qtbot, tmp_path: Path, skimage_data_dir: Path):
    ckpt = tmp_path / "tiny.pth"
    torch.save(tiny_backbone(registers=4).state_dict(), ckpt)
    settings = QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
    models = ModelService(settings)
    models.set_source(str(ckpt))
    runner = TaskRunner()
    v = Viewer(models, runner)
    v.resolution = 224
    qtbot.addWidget(v)
    v.resize(700, 560)
    v.show()
    photos = []
    for name in ("chelsea.png", "coffee.png", "astronaut.png"):
        p = tmp_path / f"{Path(name).stem}.jpg"
        Image.open(skimage_data_dir / name).convert("RGB").save(p, quality=90)
        photos.append(str(p))
    yield v, photos
    runner.wait()


def _pixels(view) -> np.ndarray:
    """What the view shows (photo and overlay), rendered at a fixed size so two renders compare pixel by pixel."""
    img = QImage(320, 240, QImage.Format.Format_RGB888)
    img.fill(0)
    painter = QPainter(img)
    view.scene().render(painter)
    painter.end()
    return np.frombuffer(img.constBits(), np.uint8, img.sizeInBytes()).reshape(240, img.bytesPerLine())[
        :, :960].copy()


def test_parts_overlay_changes_the_pixels_shown(qtbot, viewer) -> None:
    v, photos = viewer
    v.open(photos[0], context=photos[1:])
    assert "300×451" in v.info.text() or "451" in v.info.text()
    before = _pixels(v.view)
    v.parts_box.setChecked(True)
    qtbot.waitUntil(lambda: not v.view.overlay.pixmap().isNull(), timeout=30000)
    after = _pixels(v.view)
    assert np.abs(after.astype(int) - before.astype(int)).mean() > 5  # the photo now carries part colours
    assert len(v.parts) == 1 and v.parts[0].rgb.shape[2] == 3
    # Joint with the results: one PCA over three photos, one result per photo.
    v.joint_box.setChecked(True)
    qtbot.waitUntil(lambda: len(v.parts) == 3, timeout=30000)
    v.parts_box.setChecked(False)
    assert v.view.overlay.pixmap().isNull()


def test_click_shows_a_heatmap_and_finds_the_best_match(qtbot, viewer) -> None:
    v, photos = viewer
    v.open(photos[0], context=[photos[0].replace("chelsea", "coffee")])
    v.heat_box.setChecked(True)
    v._patch_clicked(200.0, 150.0)
    qtbot.waitUntil(lambda: bool(v.heatmaps), timeout=30000)
    own = v.heatmaps[0]
    r, c = np.unravel_index(np.argmax(own.sim), own.sim.shape)
    assert own.sim[r, c] == pytest.approx(1.0, abs=1e-3)  # a patch is most similar to itself
    assert len(v.heatmaps) == 2 and not v.view.overlay.pixmap().isNull()


def test_drawing_a_box_asks_for_a_region_search(qtbot, viewer) -> None:
    v, photos = viewer
    v.open(photos[1])
    v.region_button.setChecked(True)
    vp = v.view.viewport()
    a = v.view.mapFromScene(50, 40)
    b = v.view.mapFromScene(250, 200)
    with qtbot.waitSignal(v.region_search) as sig:
        qtbot.mousePress(vp, Qt.MouseButton.LeftButton, pos=a)
        qtbot.mouseMove(vp, pos=QPoint((a.x() + b.x()) // 2, (a.y() + b.y()) // 2))
        qtbot.mouseMove(vp, pos=b)
        qtbot.mouseRelease(vp, Qt.MouseButton.LeftButton, pos=b)
    path, box = sig.args
    assert path == photos[1]
    x0, y0, x1, y1 = box
    assert 40 <= x0 <= 60 and 30 <= y0 <= 50 and 240 <= x1 <= 260 and 190 <= y1 <= 210
    assert not v.region_button.isChecked()


def test_unreadable_photo_shows_the_reason(qtbot, viewer, tmp_path: Path) -> None:
    v, _ = viewer
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    v.open(str(bad))
    assert "broken.jpg" in v.info.text()
