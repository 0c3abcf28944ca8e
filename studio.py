"""The studio: compose new scenes from a trained model in the browser (issue 15).

    python studio.py --ckpt runs/mnist_equivariant_cpu/checkpoints/last.ckpt      # scene model
    python studio.py --ckpt runs/sprites_hamiltonian_cpu/checkpoints/last.ckpt    # motion model

A local Gradio app (``pip install -e ".[studio]"``; in ``dev`` too), served on 127.0.0.1:7860 by
default. Pick example inputs (from the assets: the test split of the checkpoint's dataset) or
upload your own images, GIFs, MP4s; the result updates on every change.

* Scene model (paper 000): choose the character, the background and the animation source, or
  remove the background.
* Motion model (paper 004): an image and an action, the length by a slider (image -> sequence);
  and motion swap between two clips.

Scrub through the result with the frame slider; export it as GIF or MP4 (MP4 needs the
``video`` extra). The engine is ``lightning_modules.composer``; ``benchmarks/render_speed.py
--studio`` times these handlers.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lightning_modules.composer import MotionComposer, SceneComposer, StudioError, load_composer, read_upload, to_uint8

NONE = "(none)"
UPLOAD = "(uploaded file)"
DISPLAY_SIZE = 256
FILE_TYPES = [".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"]


def show(frame: np.ndarray) -> np.ndarray:
    """A ``h w 3`` uint8 frame enlarged (nearest) for the page."""
    return np.asarray(Image.fromarray(frame).resize((DISPLAY_SIZE, DISPLAY_SIZE), Image.Resampling.NEAREST))


class Handlers:
    """The studio's callbacks, without Gradio (the benchmark and the tests call them directly)."""

    def __init__(self, composer: SceneComposer | MotionComposer, export_dir: str | None = None) -> None:
        self.c = composer
        self.examples = {name: clip for name, clip, _ in composer.examples}
        self.example_actions = {name: action for name, _, action in composer.examples}
        self.export_dir = Path(export_dir or tempfile.mkdtemp(prefix="scenemotion-studio-"))

    def clip(self, choice: str | None, upload: str | None) -> torch.Tensor | None:
        """The input of a slot: the uploaded file when there is one, else the chosen example."""
        if upload:
            return read_upload(upload, self.c.image_size, 1)
        if not choice or choice == NONE:
            return None
        if choice not in self.examples:
            raise StudioError(f"Unknown example {choice!r}.")
        return self.examples[choice]

    @staticmethod
    def frame(result: np.ndarray | None, index: float) -> np.ndarray | None:
        """Frame ``index`` of a rendered result (``t h w 3`` uint8), enlarged: the frame slider."""
        if result is None or len(result) == 0:
            return None
        return show(result[min(int(index), len(result) - 1)])

    def preview(self, choice: str | None, upload: str | None) -> np.ndarray | None:
        clip = self.clip(choice, upload)
        return None if clip is None else show(to_uint8(clip[:1])[0])

    # ---------------------------------------------------------------- scene model
    def compose(self, character: str, character_file: str | None, background: str, background_file: str | None,
                animation: str, animation_file: str | None, remove: bool, index: float):
        """Render the composition; returns ``(frame image, result clip, number of frames, message)``."""
        char = self.clip(character, character_file)
        if char is None:
            raise StudioError("Choose or upload a character.")
        clip = self.c.compose(char, self.clip(background, background_file), self.clip(animation, animation_file), bool(remove))
        result = to_uint8(clip)
        return self.frame(result, index), result, len(result)

    # ---------------------------------------------------------------- motion model
    def generate(self, image: str, image_file: str | None, action: str, length: float, index: float):
        clip = self.clip(image, image_file)
        if clip is None:
            raise StudioError("Choose or upload an image.")
        result = to_uint8(self.c.generate(clip[:1], action, int(length)))
        return self.frame(result, index), result, len(result)

    def swap(self, clip_a: str, file_a: str | None, action_a: str, clip_b: str, file_b: str | None, action_b: str, index: float):
        a, b = self.clip(clip_a, file_a), self.clip(clip_b, file_b)
        if a is None or b is None:
            raise StudioError("Choose or upload both clips.")
        ab, ba = self.c.swap(a, b, action_a, action_b)
        result = np.concatenate([to_uint8(ab), to_uint8(ba)], axis=2)  # side by side: a with b's motion | b with a's
        return self.frame(result, index), result, len(result)

    def default_action(self, choice: str | None) -> str:
        k = self.example_actions.get(choice)
        return self.c.action_names[k if k is not None and k < len(self.c.action_names) else 0]

    # ---------------------------------------------------------------- export
    def export(self, result: np.ndarray | None, fmt: str, fps: float = 10.0) -> str:
        """Write the current result as GIF or MP4; returns the file's path (the download)."""
        from callbacks.prediction_writer import write_gif, write_mp4

        if result is None or len(result) == 0:
            raise StudioError("Nothing to export yet: compose a result first.")
        clip = torch.from_numpy(np.ascontiguousarray(result)).permute(0, 3, 1, 2).float() / 255
        path = self.export_dir / f"scenemotion-{time.strftime('%Y%m%d-%H%M%S')}-{time.monotonic_ns() % 10**6:06d}.{fmt}"
        (write_gif if fmt == "gif" else write_mp4)(clip, path, fps)
        return str(path)


def build_app(composer: SceneComposer | MotionComposer, title: str = "scenemotion studio"):
    """The Gradio Blocks of the studio for a composer."""
    import gradio as gr

    h = Handlers(composer)
    names = list(h.examples)

    def guarded(fn):
        def run(*args):
            try:
                return fn(*args)
            except StudioError as exc:
                raise gr.Error(str(exc)) from None

        return run

    def slot(label: str, default: str | None, optional: bool, key: str):
        with gr.Column(min_width=180):
            choice = gr.Dropdown(([NONE] if optional else []) + names, value=default, label=label, elem_id=f"{key}_choice")
            upload = gr.File(label=f"or upload ({label.lower()}): image, GIF or video", file_types=FILE_TYPES, type="filepath", height=110,
                             elem_id=f"{key}_upload")
            preview = gr.Image(label=f"{label} (first frame)", interactive=False, height=150, elem_id=f"{key}_preview")
        for event in (choice.change, upload.change):
            event(guarded(h.preview), [choice, upload], preview)
        return choice, upload, preview

    def result_area(key: str):
        image = gr.Image(label="Result", interactive=False, height=DISPLAY_SIZE + 40, elem_id=f"{key}_result")
        frame = gr.Slider(0, 63, value=0, step=1, label="Frame", elem_id=f"{key}_frame")
        count = gr.Number(value=0, label="Frames in the result", interactive=False, elem_id=f"{key}_count")
        with gr.Row():
            gif = gr.Button("Export GIF", elem_id=f"{key}_export_gif")
            mp4 = gr.Button("Export MP4", elem_id=f"{key}_export_mp4")
        download = gr.File(label="Download", interactive=False, elem_id=f"{key}_download")
        state = gr.State(None)
        frame.change(h.frame, [state, frame], image, show_progress="hidden")
        gif.click(guarded(lambda r: h.export(r, "gif")), state, download)
        mp4.click(guarded(lambda r: h.export(r, "mp4")), state, download)
        return image, frame, count, state

    def wire(fn, inputs, outputs, triggers):
        image, frame, count, state = outputs

        def run(*args):
            picture, result, n = guarded(fn)(*args)
            return picture, result, n, gr.update(maximum=max(n - 1, 1))

        for t in triggers:
            t.change(run, inputs + [frame], [image, state, count, frame], show_progress="minimal")

    with gr.Blocks(title=title, analytics_enabled=False) as app:
        if isinstance(composer, SceneComposer):
            gr.Markdown(f"## {title}: scene model (character, background, animation)\n"
                        "The character is rendered where it is in each frame of its clip, or, with an animation source, "
                        "its first frame moves like the animation. Upload your own images, GIFs or videos.")
            with gr.Row():
                with gr.Column(scale=3):
                    with gr.Row():
                        char = slot("Character", names[0] if names else None, False, "character")
                        bg = slot("Background", names[1 % len(names)] if names else NONE, True, "background")
                        anim = slot("Animation", names[2 % len(names)] if names else NONE, True, "animation")
                    remove = gr.Checkbox(False, label="Remove the background (plain canvas)", elem_id="remove_background")
                with gr.Column(scale=2):
                    out = result_area("scene")
            inputs = [char[0], char[1], bg[0], bg[1], anim[0], anim[1], remove]
            wire(h.compose, inputs, out, inputs)
            app.load(lambda *a: [guarded(h.preview)(a[i], a[i + 1]) for i in (0, 2, 4)], inputs[:6], [char[2], bg[2], anim[2]])
            load_inputs = inputs
            load_fn = h.compose
        else:
            actions = composer.action_names
            gr.Markdown(f"## {title}: motion model (image to sequence, motion swap)\n"
                        "Pick an image and an action: the model plays the action from that pose for as many frames as the "
                        "slider says. Motion swap gives each clip the other's motion.")
            with gr.Tab("Image to sequence"):
                with gr.Row():
                    img = slot("Image", names[0] if names else None, False, "image")
                    with gr.Column():
                        action = gr.Dropdown(actions, value=h.default_action(names[0] if names else None), label="Action", elem_id="action")
                        length = gr.Slider(1, 64, value=16, step=1, label="Length (frames)", elem_id="length")
                out = result_area("generate")
                gen_inputs = [img[0], img[1], action, length]
                wire(h.generate, gen_inputs, out, gen_inputs)
            with gr.Tab("Motion swap"):
                with gr.Row():
                    a = slot("Clip A", names[0] if names else None, False, "clip_a")
                    b = slot("Clip B", names[-1] if names else None, False, "clip_b")
                    with gr.Column():
                        action_a = gr.Dropdown(actions, value=h.default_action(names[0] if names else None), label="Action of A", elem_id="action_a")
                        action_b = gr.Dropdown(actions, value=h.default_action(names[-1] if names else None), label="Action of B", elem_id="action_b")
                gr.Markdown("Result: A's content with B's motion | B's content with A's motion.")
                swap_out = result_area("swap")
                swap_inputs = [a[0], a[1], action_a, b[0], b[1], action_b]
                wire(h.swap, swap_inputs, swap_out, swap_inputs)
            app.load(lambda c, f: guarded(h.preview)(c, f), img[:2], img[2])
            load_inputs, load_fn = gen_inputs, h.generate
        image, frame, count, state = out

        def first(*args):
            picture, result, n = guarded(load_fn)(*args)
            return picture, result, n, gr.update(maximum=max(n - 1, 1))

        app.load(first, load_inputs + [frame], [image, state, count, frame])
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python studio.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="a checkpoint of the scene model or of the motion model")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--examples", type=int, default=6, help="example clips from the assets")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        composer = load_composer(args.ckpt, num_examples=args.examples)
    except StudioError as exc:
        sys.exit(f"studio: {exc}")
    try:
        import gradio  # noqa: F401
    except ImportError:
        sys.exit('studio: Gradio is not installed: pip install -e ".[studio]"')
    app = build_app(composer)
    print(f"studio: {type(composer.module).__name__} from {args.ckpt}; open http://{args.host}:{args.port}", flush=True)
    app.launch(server_name=args.host, server_port=args.port, show_error=True, quiet=True)


if __name__ == "__main__":
    main()
