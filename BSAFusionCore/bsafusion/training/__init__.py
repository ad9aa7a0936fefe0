"""Training: the aligned-pair dataset with synthetic misalignment (:mod:`.data`), the losses
(:mod:`.losses`), the training loop (:mod:`.train`) and its multi-process runs (:mod:`.distributed`)."""
