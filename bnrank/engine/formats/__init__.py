"""The checkpoint formats people share, each recognised from its contents and read without running its code.

* `zips`: model folders and zips, their names, sizes and counts judged before a byte is decompressed.
* `nnunet`: nnU-Net v2 trained-model folders (plans.json, dataset.json, fold_N/checkpoint_final.pth) and
  bare `checkpoint_final.pth` files, whose `init_args` carry the plans.
* `bundle`: MONAI bundles (configs/metadata.json, configs/inference.json or train.json, models/model.pt).
* `torchscript`: TorchScript archives, whose tensors are read by a restricted unpickler, never `torch.jit.load`.

`bnrank.engine.checkpoints.read_state_dict` sniffs the bytes and dispatches here; plain state dicts
(`torch.save`, safetensors) stay there.
"""
