"""A record of every stage of a compilation, for debugging."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import onnx
from concrete import fhe


class DebugArtifacts:
    """Filled by the compile functions: the ONNX model, the quantized graph and the MLIR.

    Parameters
    ----------
    output_directory : str or Path
        Where ``export()`` writes the files.
    """

    def __init__(self, output_directory: Union[str, Path] = ".artifacts"):
        self.output_directory = Path(output_directory)
        self.onnx_model: Optional[onnx.ModelProto] = None
        self.quantized_graph: Optional[str] = None
        self.mlir: Optional[str] = None
        self.fhe = fhe.DebugArtifacts(self.output_directory / "concrete")

    def export(self) -> Path:
        """Write what was recorded to ``output_directory``."""
        self.output_directory.mkdir(parents=True, exist_ok=True)
        if self.onnx_model is not None:
            onnx.save(self.onnx_model, str(self.output_directory / "model.onnx"))
            # which torch exporter wrote the graph, when fheestimators exported it
            exporter = {p.key: p.value for p in self.onnx_model.metadata_props}.get("fheestimators.exporter")
            if exporter is not None:
                (self.output_directory / "exporter.txt").write_text(exporter + "\n")
        if self.quantized_graph is not None:
            (self.output_directory / "quantized_graph.txt").write_text(self.quantized_graph)
        if self.mlir is not None:
            (self.output_directory / "circuit.mlir").write_text(self.mlir)
        self.fhe.export()
        return self.output_directory
