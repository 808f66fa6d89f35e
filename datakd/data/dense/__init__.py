"""Detection and segmentation data: COCO and Cityscapes readers, joint transforms, loaders, test bed.

Modules: `coco` (COCO instances JSON -> `DetectionSplit`, dataset `coco`), `cityscapes` (semantic label
maps -> `SegmentationSplit`, dataset `cityscapes`), `transforms` (image + boxes/masks/label map moved
together with torchvision.transforms.v2, randomness from explicit generators), `loaders` (the training and
evaluation loaders, `build_dense_loaders`) and `scenes` (the Fashion-MNIST scene generator, the real-image
test bed written in both layouts).
"""
