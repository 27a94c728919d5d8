"""The input / output / temp folders of an instance, following ComfyUI's folder_paths rules."""

from __future__ import annotations

import hashlib
import mimetypes
import os
import re
import shutil
import tempfile
from pathlib import Path

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}

_ANNOTATION = re.compile(r"^(.*) \[(input|output|temp)\]$")


class Folders:
    """The three folders. Default ones are fresh temp dirs, removed by `cleanup()`."""

    def __init__(
        self, input_dir: str | Path | None, output_dir: str | Path | None, temp_dir: str | Path | None
    ) -> None:
        self._owned: list[Path] = []
        self.input = self._dir(input_dir, "input")
        self.output = self._dir(output_dir, "output")
        self.temp = self._dir(temp_dir, "temp")
        #: (folder, subfolder, prefix) -> next counter. ComfyUI lists the whole folder on every
        #: save (it slows down as the folder fills); this lists it once and then counts.
        self._counters: dict[tuple[str, str], int] = {}

    def _dir(self, given: str | Path | None, kind: str) -> Path:
        if given is not None:
            p = Path(given).resolve()
            p.mkdir(parents=True, exist_ok=True)
            return p
        p = Path(tempfile.mkdtemp(prefix=f"comfy-emu-{kind}-")).resolve()
        self._owned.append(p)
        return p

    def cleanup(self) -> None:
        for p in self._owned:
            shutil.rmtree(p, ignore_errors=True)

    def reset_process_state(self) -> None:
        """What a process restart loses: the save counters (re-read from disk), and temp/
        (ComfyUI empties its temp folder at startup)."""
        self._counters.clear()
        if self.temp.exists():
            for child in self.temp.iterdir():
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)

    def by_type(self, type_: str | None) -> Path | None:
        return {"input": self.input, "output": self.output, "temp": self.temp}.get(type_ or "")

    # -- names --------------------------------------------------------------------------------

    def annotated(self, name: str, default: Path) -> Path | None:
        """`name.png [output]` -> that folder's file; a plain name is relative to `default`."""
        m = _ANNOTATION.match(name)
        base = default
        if m:
            name, base = m.group(1), self.by_type(m.group(2)) or default
        path = (base / name).resolve()
        if os.path.commonpath((str(base), str(path))) != str(base):
            return None
        return path

    def input_image_exists(self, name: object) -> bool:
        if not isinstance(name, str) or not name:
            return False
        path = self.annotated(name, self.input)
        return path is not None and path.is_file()

    def list_input_images(self) -> list[str]:
        """The top-level image files of input/, sorted: LoadImage's options in /object_info."""
        try:
            names = os.listdir(self.input)
        except FileNotFoundError:
            return []
        return sorted(
            n
            for n in names
            if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS and os.path.isfile(self.input / n)
        )

    def list_files_by_mtime(self, folder: Path) -> list[str]:
        """`/internal/files/{type}`: image files, newest first."""
        entries = [
            e
            for e in os.scandir(folder)
            if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
        ]
        entries.sort(key=lambda e: -e.stat().st_mtime)
        return [e.name for e in entries]

    # -- saving -------------------------------------------------------------------------------

    def save_path(self, folder: Path, filename_prefix: str) -> tuple[Path, str, int, str]:
        """ComfyUI's get_save_image_path: `(full_folder, filename, counter, subfolder)`.

        A prefix may contain a subfolder (`"portraits/run"`); the counter is one more than the
        highest `{filename}_{counter:05}_*` already in that folder.
        """
        norm = os.path.normpath(filename_prefix)
        subfolder = os.path.dirname(norm)
        filename = os.path.basename(norm)
        full = (folder / subfolder).resolve()
        if os.path.commonpath((str(folder), str(full))) != str(folder):
            raise Exception(
                "**** ERROR: Saving image outside the output folder is not allowed."
                f"\n full_output_folder: {full}\n         output_dir: {folder}"
                f"\n         commonpath: {os.path.commonpath((str(folder), str(full)))}"
            )
        key = (str(full), filename.lower())
        counter = self._counters.get(key)
        if counter is None:
            counter = self._scan_counter(full, filename)
        self._counters[key] = counter
        return full, filename, counter, subfolder

    def advance(self, full: Path, filename: str, next_counter: int) -> None:
        self._counters[(str(full), filename.lower())] = next_counter

    @staticmethod
    def _scan_counter(full: Path, filename: str) -> int:
        try:
            names = os.listdir(full)
        except FileNotFoundError:
            full.mkdir(parents=True, exist_ok=True)
            return 1
        n = len(filename)
        best = 0
        for name in names:
            if name[:n].lower() != filename.lower() or name[n : n + 1] != "_":
                continue
            try:
                digits = int(name[n + 1 :].split("_")[0])
            except ValueError:
                digits = 0
            best = max(best, digits)
        return best + 1

    # -- uploads ------------------------------------------------------------------------------

    def upload_target(
        self, base: Path, subfolder: str, filename: str, overwrite: bool, content: bytes
    ) -> tuple[Path, str, bool] | None:
        """Where an upload goes, as ComfyUI decides: `(path, name, is_duplicate)`.

        Without overwrite, an existing name becomes `name (1).ext`, `name (2).ext`, ...; unless
        the existing file has the same content, in which case nothing is written and its name is
        returned. None when the path would leave the folder.
        """
        full_folder = (base / os.path.normpath(subfolder)).resolve() if subfolder else base
        path = (full_folder / filename).resolve()
        if os.path.commonpath((str(base), str(path))) != str(base):
            return None
        full_folder.mkdir(parents=True, exist_ok=True)
        if overwrite:
            return path, filename, False
        stem, ext = os.path.splitext(filename)
        i = 1
        digest = None
        while path.exists():
            if digest is None:
                digest = hashlib.sha256(content).hexdigest()
            if sha256_file(path) == digest:
                return path, filename, True
            filename = f"{stem} ({i}){ext}"
            path = full_folder / filename
            i += 1
        return path, filename, False


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_type(filename: str) -> str:
    """`/view`'s Content-Type: by extension; types a browser would run are sent as downloads."""
    ctype = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    if ctype in {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript", "text/css"}:
        ctype = "application/octet-stream"
    return ctype
