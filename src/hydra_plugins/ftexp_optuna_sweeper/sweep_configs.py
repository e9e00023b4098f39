"""The `sweep` config group: ready campaigns kept in ftexp's top-level `sweeps/` folder.

`python -m ftexp +sweep=lora_rank_lr` picks `sweeps/lora_rank_lr.yaml`. conf/config.yaml puts
`ftexp-sweeps://sweeps` on the search path; this source serves that folder (relative to the
project root: the checkout, or the installed package where the wheel carries it as
`ftexp/sweeps`) as the group `sweep`, so the folder keeps its plain name and holds nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from omegaconf import OmegaConf

GROUP = "sweep"


class SweepsConfigSource(ConfigSource):
    def __init__(self, provider: str, path: str) -> None:
        super().__init__(provider=provider, path=path)
        folder = Path(self.path)
        if not folder.is_absolute():
            from ftexp.runs.paths import project_root

            folder = project_root() / folder
        self.folder = folder

    @staticmethod
    def scheme() -> str:
        return "ftexp-sweeps"

    def _file(self, config_path: str) -> Optional[Path]:
        """'sweep/x' → <folder>/x.yaml; None for anything outside the group."""
        head, _, name = config_path.strip("/").partition("/")
        if head != GROUP or not name or "/" in name:
            return None
        return self.folder / self._normalize_file_name(name)

    def available(self) -> bool:
        return self.folder.is_dir()

    def is_group(self, config_path: str) -> bool:
        return config_path.strip("/") in ("", GROUP)

    def is_config(self, config_path: str) -> bool:
        path = self._file(config_path)
        return path is not None and path.is_file()

    def load_config(self, config_path: str) -> ConfigResult:
        path = self._file(config_path)
        if path is None or not path.is_file():
            raise ConfigLoadError(f"Config not found: {config_path}")
        text = path.read_text(encoding="utf-8")
        return ConfigResult(config=OmegaConf.load(path), path=self.full_path(),
                            provider=self.provider, header=self._get_header_dict(text[:512]))

    def list(self, config_path: str, results_filter: Optional[ObjectType]) -> List[str]:
        path = config_path.strip("/")
        if path == "":
            return [GROUP] if results_filter in (None, ObjectType.GROUP) else []
        if path == GROUP and results_filter in (None, ObjectType.CONFIG) and self.available():
            return sorted(f.stem for f in self.folder.glob("*.yaml"))
        return []
