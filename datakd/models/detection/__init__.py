"""Object detectors: torchvision Faster R-CNN / RetinaNet / FCOS / Mask R-CNN over ResNet(-X) + FPN, by name.

`builders` registers the names (family ``"detection"``), `forward.run_detector` runs a detector the way the
training loop needs (losses plus the head outputs distillation terms read), `inherit.copy_neck_and_head`
copies a teacher's FPN and head into a student (FGD's ``init_student``). torchvision is imported only when a
detector is built or run, so listing models stays fast.
"""

from datakd.models.detection.builders import build_detector
from datakd.models.detection.forward import DetectorRunner, run_detector
from datakd.models.detection.inherit import copy_neck_and_head

__all__ = ["DetectorRunner", "build_detector", "copy_neck_and_head", "run_detector"]
