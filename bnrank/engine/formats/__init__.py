"""The checkpoint formats people share, each recognised from its contents and read without running its code.

* `zips`: model folders and zips, their names, sizes and counts judged before a byte is decompressed.
* `nnunet`: nnU-Net v2 trained-model folders (plans.json, dataset.json, fold_N/checkpoint_final.pth) and
  bare `checkpoint_final.pth` files, whose `init_args` carry the plans.
* `bundle`: MONAI bundles (configs/metadata.json, configs/inference.json or train.json, models/model.pt).
* `torchscript`: TorchScript archives, whose tensors are read by a restricted unpickler, never `torch.jit.load`.
* `onnx_graph`: ONNX models, the graph judged (operator allow-list, sizes, no external data) before anything is
  built; `onnx_network`: the checked graph as a torch module (norms as torch norm layers, the head found);
  `conversion`: its conversion report as text.

And the readers of plain checkpoints, each bounding what it may allocate before it allocates it:

* `safetensors_file`: `.safetensors`, its header's offsets checked against the file.
* `torch_zip`: a `torch.save` zip sized from its central directory; `legacy`: a pre-1.6 pickle sized by a walk
  that builds nothing; `pickles`: `torch.load(weights_only=True)` after either check, numpy scalars allowed.
* `limits`: the default byte limits they share.

`bnrank.engine.checkpoints.read_state_dict` sniffs the bytes and dispatches here.
"""
