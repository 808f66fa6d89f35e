"""The CIFAR model zoo, state-dict compatible with RepDistiller / mdistiller.

One file per family; each registers its names with `datakd.models.registry.register_model` (family
``"cifar"``) when the registry discovers this package. Architectures and parameter names follow
HobbitLong/RepDistiller ``models/*.py`` (re-hosted by megvii-research/mdistiller
``mdistiller/models/cifar/*.py``), so the published ``ckpt_epoch_240.pth`` teachers load with
``datakd.models.checkpoint_io.load_weights(model, checkpoint)`` (strict). The implementations are our own:

* ``forward(x)`` returns logits only; intermediate features come from named taps (forward hooks), see
  each file's docstring for which module a tap is;
* global pooling is adaptive (parameter-free, identical on 32x32, also valid on e.g. 28x28 inputs);
* every activation is a non-inplace module, so a hooked tensor is never overwritten later in the pass;
* every model takes ``in_channels`` (first convolution only) and ``num_classes``.
"""
