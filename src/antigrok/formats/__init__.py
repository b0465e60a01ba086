"""Reading weights from files that come from outside the current job, never unpickling code:
``loading`` (torch checkpoints, safetensors, Hugging Face folders, .npz, ONNX; the project's
checkpoint reader ``read_checkpoint`` / ``read_state_dict``), ``mxfp4`` (gpt-oss's MXFP4 experts,
dequantized one matrix at a time) and ``torchscript`` (TorchScript archives read as zip files).

Imports: the foundations (antigrok.files and friends) only.
"""
