"""The method: entropic OT alignment (`ot`), the mixup family (`mixing`) and AlignMixup's training
forward pass (`method`). The public functions are exported from `alignmix_jax`."""
