"""Headless batch entry (BSAFusionBatch.main) tested inside Slicer (ctest; needs Slicer).

Writes a small phantom MRI/CT pair to Slicer's temporary folder, runs the batch entry the way
``Slicer --no-main-window --python-script BSAFusionBatch.py ...`` would (same function, same
arguments), and checks the exit status and the files it writes.
"""

import os
import shutil
import unittest

import slicer


class BSAFusionBatchTest(unittest.TestCase):
    def setUp(self):
        slicer.mrmlScene.Clear()
        self.folder = os.path.join(slicer.app.temporaryPath, "BSAFusionBatchTest")
        shutil.rmtree(self.folder, ignore_errors=True)
        os.makedirs(self.folder)

    def _pair(self):
        import numpy as np
        import SimpleITK as sitk
        from bsafusion.phantom import phantom_pair

        pair = phantom_pair("CT", shape=(12, 64, 64), seed=2)
        paths = []
        for name, array in (("mri.nrrd", pair.mri), ("ct.nrrd", pair.other)):
            image = sitk.GetImageFromArray(array.astype(np.float32))
            image.SetSpacing((1.2, 1.2, 2.5))
            paths.append(os.path.join(self.folder, name))
            sitk.WriteImage(image, paths[-1])
        return paths

    def _weights(self):
        """Shipped CT model if present, else a tiny untrained one (checks wiring, not quality)."""
        from bsafusion.model import checkpoint
        from bsafusion.model import BSFAF, ModelConfig

        if checkpoint.default_weights_path("CT").is_file():
            return []
        path = os.path.join(self.folder, "tiny_ct.pt")
        cfg = ModelConfig(img_size=64, channels=8, embed_dim=32, patch_size=8, heads=2, pyramid_channels=(16, 12, 8))
        checkpoint.save(path, BSFAF(cfg), "CT")
        return ["--weights", path]

    def test_batch_writes_outputs(self):
        import BSAFusionBatch
        from bsafusion.inference.volume import OUTPUT_FILES

        fixed, moving = self._pair()
        out = os.path.join(self.folder, "out")
        scene = os.path.join(out, "scene.mrb")
        status = BSAFusionBatch.main(["--fixed", fixed, "--moving", moving, "--modality", "CT", "--out", out,
                                      "--scene", scene] + self._weights())
        self.assertEqual(status, 0)
        for pattern in OUTPUT_FILES.values():
            self.assertTrue(os.path.isfile(os.path.join(out, pattern.format(stem="bsafusion"))), pattern)
        self.assertTrue(os.path.isfile(scene))

    def test_batch_exit_status_on_bad_input(self):
        import BSAFusionBatch

        fixed, moving = self._pair()
        out = os.path.join(self.folder, "bad")
        missing = os.path.join(self.folder, "missing.pt")
        self.assertEqual(BSAFusionBatch.main(["--fixed", fixed, "--moving", moving, "--modality", "CT",
                                              "--out", out, "--weights", missing]), 2)
        self.assertEqual(BSAFusionBatch.main(["--fixed", fixed + ".none", "--moving", moving, "--modality", "CT",
                                              "--out", out]), 2)
        self.assertFalse(os.path.exists(out))
