"""The Gradio Blocks layout: components and event wiring only. The work happens in ui.handlers / studio.service."""

from __future__ import annotations

import gradio as gr

from krea2 import RAW, TURBO, get_spec
from krea2.image_input import DEFAULT_STRENGTH
from krea2.request import MAX_IMAGES, MAX_SIDE, MIN_SIDE, SIDE_MULTIPLE
from studio.service import StudioService

from .api import register_api
from .attribution import FOOTER_HTML
from .handlers import (
    CHECKPOINT_CHOICES,
    COMPARE_CHECKPOINTS,
    COMPARE_LORAS,
    DEFAULT_CHECKPOINT,
    REQUEST_DEFAULTS,
    RUN_BUTTONS,
    Handlers,
    default_settings,
    guidance_label,
    short_name,
    steps_label,
)
from .image_inputs import (
    DEFAULT_FEATHER,
    REUSED_MASK_NOTE,
    STRENGTH_RANGE,
)
from .lora_picker import lora_picker, wire_lora_pickers
from .presets import checkpoint_note, preset_choices, preset_for
from .robust import StudioBlocks

# What the demo model knows is demo/scenes.py's vocabulary (tests/test_demo_model.py keeps the two in step).
DEMO_BANNER = (
    "### ⚠️ Demo checkpoints in use\n"
    "No CUDA GPU or no weights were found (or `--demo` was given): images come from a miniature Krea 2 that this "
    "project trained on pictures of shapes, not from Krea 2 itself. It knows circles, squares, triangles, stars, "
    "diamonds and crosses in red, orange, yellow, green, blue, purple, pink, brown, white and black, on plain, "
    'striped, checkered or dotted backgrounds, with places ("in the top left corner"), counts ("two", '
    '"three") and relations ("to the left of", "above"); it draws best at 256 px (at 512 px it sometimes adds '
    "shapes). On prompts it never saw in training it gets a single shape right about 99 times in 100, a relation "
    "about nine times in ten and a count three or four times in five, on Raw and Turbo alike. A picture you upload "
    "comes back in or near those ten colours (the demo VAE knows no others). A style "
    "LoRA trained on the demo Raw comes with it: pick "
    "**demo/pixel-style** under LoRAs (a weight from 0.8 to 1.5) and compare Raw and Turbo with it."
)
DEMO_EXAMPLES = [
    "a red circle on a blue background",
    "a yellow star in the top left corner on a black background",
    "two green squares on a striped white background",
    "a purple triangle to the left of an orange circle on a white background",
]
# Every custom colour has a light and a dark value: Gradio puts `.dark` on the page when the browser prefers dark (or
# ?__theme=dark), and Markdown text takes the theme's colour unless told otherwise (near-white on pale yellow). One
# selector per rule: Gradio scopes custom CSS, and a `.dark` rule with a selector list lost to the light one.
CSS = """
#demo-banner {background: #fff3cd; border: 1px solid #ffe69c; border-radius: 8px; padding: 4px 12px;}
#demo-banner * {color: #664d03 !important;}
.dark #demo-banner {background: #332701; border-color: #997404;}
.dark #demo-banner * {color: #ffda6a !important;}
.krea2-details {border-collapse: collapse;}
.krea2-details th {text-align: left; padding-right: 1em; vertical-align: top;}
.krea2-details td {white-space: pre-wrap; overflow-wrap: anywhere;}
/* History's two filter ticks keep their whole label: in a narrow row they shrank to 82 px and cut it off. */
.history-flag {min-width: 11em !important;}
/* Phone: History's fixed six 98 px columns were twice the screen; three flexible ones fit, and the tab bar wraps
   instead of hiding History and PNG info behind a menu. */
@media (max-width: 640px) {
  #history-gallery .grid-container {grid-template-columns: repeat(3, minmax(0, 1fr)) !important;}
  #history-gallery .grid-container > * {width: auto !important; min-width: 0 !important;}
  #demo-banner {max-height: 10em; overflow-y: auto;}  /* whole, it filled a phone's first screen; it scrolls */
}
"""
# Ctrl/Cmd+Enter in a prompt runs it, as Enter does (Enter alone in a multi-line box is easy to miss). A click on
# the button, so a run in flight (button disabled) is not queued twice.
KEYS_JS = """
() => {
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey)) return;
    const target = event.target;
    const button = target.closest("#compare-prompt, #compare-negative") ? "#compare-btn"
      : target.closest("#prompt, #negative-prompt") ? "#generate-btn" : null;
    if (!button) return;
    event.preventDefault();
    document.querySelector(button)?.click();
  });
}
"""


def demo_examples(prompt: gr.Textbox, visible: bool, elem_id: str) -> None:
    """The demo model's example prompts as buttons that fill `prompt`. Buttons that take no input: gr.Examples' own
    event accepts whatever a client sends."""
    with gr.Column(visible=visible, elem_id=elem_id):
        # Measured on the committed checkpoints (2026-12-06, seeds 0-7, this CPU): the first, second and last read
        # back right 8 of 8 on Raw and on Turbo; the count on stripes (the scorer cannot read a textured background)
        # has two squares 6 of 8 by eye on each, three in the others.
        gr.Markdown("Prompts the demo model knows:")
        for example in DEMO_EXAMPLES:
            button = gr.Button(example, size="sm")
            button.click(lambda text=example: text, outputs=prompt, queue=False, api_visibility="private")


def build_ui(service: StudioService) -> gr.Blocks:
    handlers = Handlers(service)
    first = get_spec(DEFAULT_CHECKPOINT)  # the checkpoint the Generate tab opens with
    side = {"minimum": MIN_SIDE, "maximum": MAX_SIDE, "step": SIDE_MULTIPLE}
    width_0, height_0 = handlers.default_size
    private = {"api_visibility": "private"}
    # Generations share one queue, as many at once as there are workers (one per GPU: krea2/workers.py).
    gpu = {"concurrency_id": "gpu", "concurrency_limit": service.concurrent_generations, **private}

    with StudioBlocks(title="Krea 2 Studio", delete_cache=(3600, 3600)) as app:
        gr.Markdown("# Krea 2 Studio")
        gr.Markdown(DEMO_BANNER, visible=service.demo, elem_id="demo-banner")
        status = gr.Markdown(service.status_line(), elem_id="status-line")
        status_shown, timer = gr.State(""), gr.Timer(2.0)
        status_read = (handlers.status_tick, status_shown, [status, status_shown, timer])  # also after each run
        for trigger in (timer.tick, app.load):
            trigger(*status_read, queue=False, **private)

        settings = gr.State(default_settings())
        current = gr.State(DEFAULT_CHECKPOINT)
        results = gr.State([])
        selected = gr.State(None)

        with gr.Tabs(selected="generate", overflow_behavior="wrap") as tabs:  # a phone shows every tab
            # -------------------------------------------------------------------------------------- Generate
            with gr.Tab("Generate", id="generate"):
                with gr.Row():
                    with gr.Column(scale=2):
                        prompt = gr.Textbox(label="Prompt", lines=1, max_lines=8, elem_id="prompt",
                                            placeholder="Describe the image… (Enter to generate)")  # fmt: skip
                        demo_examples(prompt, service.demo, "demo-examples")
                        checkpoint = gr.Radio(CHECKPOINT_CHOICES, value=first.key, label="Checkpoint", elem_id="ckpt")
                        checkpoint_info = gr.Markdown(checkpoint_note(first.key, service.demo))
                        steps = gr.Slider(*first.steps_range, value=first.default_steps, step=1,
                                          label=steps_label(first), elem_id="steps")  # fmt: skip
                        guidance = gr.Slider(*first.guidance_range, value=first.default_guidance, step=0.1,
                                             label=guidance_label(first), elem_id="guidance")  # fmt: skip
                        # Below the guidance it depends on: above the toggle, it pushed the toggle down under the
                        # pointer that had just chosen Raw.
                        negative = gr.Textbox(label="Negative prompt", visible=False, elem_id="negative-prompt")
                        preset = gr.Dropdown(preset_choices(first.key, service.demo),
                                             value=preset_for(width_0, height_0, first.key, service.demo),
                                             label="Size")  # fmt: skip
                        with gr.Row():
                            width = gr.Slider(**side, value=width_0, label="Width", elem_id="width")
                            height = gr.Slider(**side, value=height_0, label="Height", elem_id="height")
                        with gr.Row():
                            # No minimum/maximum on the number boxes: Gradio refuses a value outside them before
                            # the handler runs, and the chain then never reached `idle`, leaving Generate disabled
                            # until a reload (seed -1, another tool's "random"). GenerationRequest and the image
                            # inputs check the ranges and say so on the progress line.
                            seed = gr.Number(label="Seed", value=0, precision=0, elem_id="seed")
                            randomize = gr.Checkbox(value=True, label="Randomize seed")
                            num_images = gr.Slider(1, MAX_IMAGES, value=REQUEST_DEFAULTS["num_images"], step=1,
                                                   label="Images")  # fmt: skip
                        g_loras = lora_picker("generate", handlers.loras.choices())
                        with gr.Accordion("Start from an image · img2img, inpaint, outpaint", open=False,
                                          elem_id="image-panel") as image_panel:  # fmt: skip
                            # PNG, not Gradio's default WebP: a picture sent here from Results or History came back
                            # through lossy WebP, and inpaint's unpainted pixels no longer matched it.
                            init_editor = gr.ImageEditor(
                                label="Init image (paint to inpaint)",  # longer, the toolbar hid it
                                type="pil", format="png", sources=["upload", "clipboard"], height=320, transforms=(),
                                brush=gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=32),
                                elem_id="init-image",
                            )  # fmt: skip
                            # The mask a reused inpaint brought back, which the editor does not draw (Gradio 6.31):
                            # shown only while the editor still holds it (ui/image_inputs.py `reused_mask_view`).
                            reused_mask = gr.State(None)
                            # The last picture the app put into the editor (ui/image_inputs.py `Placing`), and the
                            # page's mark: its number, handed to the page with the picture and sent with the
                            # editor's events, which tells apart those sent before it came (`stale_echo`). (A step
                            # run in the page alone that copied it over afterwards answered a client that called it
                            # with an error of no words, tests/test_fuzz.py, and was not needed: measured in
                            # Chromium.)
                            placed = gr.State(None)
                            placed_mark = gr.Number(0, precision=0, visible=False)
                            with gr.Column(visible=False, elem_id="reused-mask") as reused_box:
                                gr.Markdown(REUSED_MASK_NOTE)
                                reused_preview = gr.Image(show_label=False, type="pil", format="png",
                                                          interactive=False, height=200, buttons=["fullscreen"],
                                                          elem_id="reused-mask-preview")  # fmt: skip
                            strength = gr.Slider(*STRENGTH_RANGE, value=DEFAULT_STRENGTH, step=0.05, elem_id="strength",
                                                 label="Strength (1 redraws from noise; lower keeps more)")  # fmt: skip
                            feather = gr.Slider(0, 64, value=DEFAULT_FEATHER, step=1, label="Mask feather (px)",
                                                elem_id="feather")  # fmt: skip
                            with gr.Row():
                                outpaint = [
                                    gr.Number(label=f"Outpaint {side} (px)", value=0, precision=0,
                                              step=SIDE_MULTIPLE, elem_id=f"outpaint-{side}")
                                    for side in ("left", "right", "top", "bottom")
                                ]  # fmt: skip
                            init_note = gr.Markdown(elem_id="init-note")
                        with gr.Row():
                            generate_btn = gr.Button("Generate", variant="primary", elem_id="generate-btn")
                            cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel-btn")
                    with gr.Column(scale=3):
                        progress = gr.Markdown(elem_id="progress")
                        preview = gr.Image(label="Live preview", type="pil", interactive=False, height=256,
                                           elem_id="preview")  # fmt: skip
                        gallery = gr.Gallery(
                            label="Results (newest first)",
                            columns=4,
                            height=400,
                            object_fit="contain",
                            fit_columns=False,  # one result in a column of four: a widened square overflowed the box
                            elem_id="results",
                        )  # whole pictures, not cropss, not crops
                        seed_used = gr.Markdown(elem_id="seed-used")
                        details = gr.HTML(elem_id="result-details")  # user text: HTML-escaped, see ui/text.py
                        with gr.Row():
                            reuse_btn = gr.Button("Use these settings", visible=False, elem_id="reuse-btn")
                            vary_btn = gr.Button("Vary (next seeds)", visible=False, elem_id="vary-btn")
                        with gr.Row():
                            send_btn = gr.Button("Send to img2img / inpaint", visible=False, elem_id="send-btn")
                            up15_btn = gr.Button("Upscale ×1.5", visible=False, elem_id="upscale-15-btn")
                            up2_btn = gr.Button("Upscale ×2", visible=False, elem_id="upscale-2-btn")

            # -------------------------------------------------------------------------------------- Compare
            with gr.Tab("Compare", id="compare"):
                with gr.Row():
                    with gr.Column(scale=2):
                        c_prompt = gr.Textbox(label="Prompt", lines=1, max_lines=8, elem_id="compare-prompt")
                        demo_examples(c_prompt, service.demo, "compare-demo-examples")
                        c_negative = gr.Textbox(label="Negative prompt (Raw)", elem_id="compare-negative")
                        with gr.Row():
                            c_seed = gr.Number(label="Seed", value=0, precision=0, elem_id="compare-seed")
                            c_random = gr.Checkbox(value=True, label="Randomize seed")
                        with gr.Row():
                            c_width = gr.Slider(**side, value=width_0, label="Width", elem_id="compare-width")
                            c_height = gr.Slider(**side, value=height_0, label="Height", elem_id="compare-height")
                        c_raw_steps = gr.Slider(*RAW.steps_range, value=RAW.default_steps, step=1,
                                                label=steps_label(RAW, short_name(RAW) + " "),
                                                elem_id="compare-raw-steps")  # fmt: skip
                        c_raw_guidance = gr.Slider(*RAW.guidance_range, value=RAW.default_guidance, step=0.1,
                                                   label=guidance_label(RAW, short_name(RAW) + " "))  # fmt: skip
                        c_turbo_steps = gr.Slider(*TURBO.steps_range, value=TURBO.default_steps, step=1,
                                                  label=steps_label(TURBO, short_name(TURBO) + " "))  # fmt: skip
                        c_mode = gr.Radio([(f"{short_name(RAW)} ↔ {short_name(TURBO)}", COMPARE_CHECKPOINTS),
                                           ("Without ↔ with LoRAs", COMPARE_LORAS)], value=COMPARE_CHECKPOINTS,
                                          label="Compare", elem_id="compare-mode")  # fmt: skip
                        c_lora_checkpoint = gr.Radio(CHECKPOINT_CHOICES, value=TURBO.key, visible=False,
                                                     label="Checkpoint (without ↔ with LoRAs)",
                                                     elem_id="compare-lora-checkpoint")  # fmt: skip
                        c_loras = lora_picker("compare", handlers.loras.choices())
                        with gr.Accordion("Start from an image", open=False, elem_id="compare-image-panel"):
                            c_init = gr.Image(label="Init image (both checkpoints start from it)", type="pil",
                                              format="png", sources=["upload", "clipboard"], height=240,
                                              elem_id="compare-init")  # fmt: skip
                            c_strength = gr.Slider(*STRENGTH_RANGE, value=DEFAULT_STRENGTH, step=0.05, label="Strength",
                                                   elem_id="compare-strength")  # fmt: skip
                        with gr.Row():
                            compare_btn = gr.Button("Compare", variant="primary", elem_id="compare-btn")
                            c_cancel = gr.Button("Cancel", variant="stop")
                    with gr.Column(scale=3):
                        c_progress = gr.Markdown(elem_id="compare-progress")
                        with gr.Row():
                            c_raw = gr.Image(label=short_name(RAW), type="filepath", interactive=False,
                                             elem_id="compare-raw")  # fmt: skip
                            c_turbo = gr.Image(label=short_name(TURBO), type="filepath", interactive=False,
                                               elem_id="compare-turbo")  # fmt: skip
                        c_slider = gr.ImageSlider(label=f"{short_name(RAW)} ↔ {short_name(TURBO)}", type="filepath",
                                                  elem_id="compare-slider")  # fmt: skip
                        c_info = gr.Markdown(elem_id="compare-info")

            # -------------------------------------------------------------------------------------- History
            with gr.Tab("History", id="history") as history_tab:
                with gr.Row():
                    h_search = gr.Textbox(label="Search prompts", elem_id="history-search", scale=3)
                    h_checkpoint = gr.Dropdown([("All", "all"), *CHECKPOINT_CHOICES], value="all", label="Checkpoint")
                    h_favorites = gr.Checkbox(label="Favorites only", elem_classes="history-flag")
                    h_comparisons = gr.Checkbox(label="Comparisons only", elem_classes="history-flag")
                    h_lora = gr.Dropdown([("All LoRAs", "")], value="", label="LoRA", elem_id="history-lora")
                    h_refresh = gr.Button("Refresh", elem_id="history-refresh")
                h_count = gr.Markdown(elem_id="history-count")
                h_gallery = gr.Gallery(label="History", columns=6, height=420, allow_preview=False,
                                       fit_columns=False, elem_id="history-gallery")  # fmt: skip
                with gr.Row():
                    h_newer = gr.Button("← Newer")
                    h_older = gr.Button("Older →")
                with gr.Accordion("Select several · export · import", open=False, elem_id="history-bulk"):
                    h_pick = gr.CheckboxGroup(label="Generations on this page", choices=[], elem_id="history-pick")
                    with gr.Row():
                        h_pick_all = gr.Button("Select all on this page", elem_id="history-pick-all")
                        h_bulk_favorite = gr.Button("★ Favorite selected", elem_id="history-bulk-favorite")
                        h_bulk_zip = gr.Button("Download selected (.zip)", elem_id="history-bulk-zip")
                        h_bulk_delete = gr.Button("Delete selected", variant="stop", elem_id="history-bulk-delete")
                    h_bulk_confirm = gr.Button("Confirm", variant="stop", visible=False, elem_id="history-bulk-confirm")
                    with gr.Row():
                        h_export = gr.Button("Export all history (.zip)", elem_id="history-export")
                        h_import = gr.UploadButton("Import history (.zip)", file_types=[".zip"], type="filepath",
                                                   elem_id="history-import")  # fmt: skip
                    h_archive = gr.File(label="Archive", visible=False, interactive=False, elem_id="history-archive")
                    # An export's or import's progress, then its count.
                    h_transfer = gr.Markdown(elem_id="history-transfer")
                h_nav = gr.State({"stack": [None], "next": None, "ids": []})
                h_selected = gr.State(None)
                with gr.Row(visible=False) as h_detail:
                    h_image = gr.Image(label="Original", type="filepath", interactive=False, elem_id="history-image")
                    h_source = gr.Image(label="Started from", type="filepath", interactive=False, visible=False,
                                        elem_id="history-source")  # fmt: skip
                    with gr.Column():
                        h_params = gr.HTML(elem_id="history-params")  # user text: HTML-escaped, see ui/text.py
                        with gr.Row():
                            h_favorite = gr.Button("☆ Favorite", elem_id="history-favorite")
                            h_reuse = gr.Button("Reuse settings", elem_id="history-reuse")
                            h_send = gr.Button("Send to img2img", elem_id="history-send")
                            h_upscale = gr.Button("Upscale ×2", elem_id="history-upscale")
                            h_download = gr.DownloadButton("Download PNG", elem_id="history-download")
                            h_delete = gr.Button("Delete", variant="stop", elem_id="history-delete")
                        h_confirm = gr.Button("Confirm delete", variant="stop", visible=False,
                                              elem_id="history-confirm-delete")  # fmt: skip

            # -------------------------------------------------------------------------------------- PNG info
            with gr.Tab("PNG info", id="pnginfo"):
                p_file = gr.File(label="Drop a PNG", file_types=[".png"], type="filepath", elem_id="png-file")
                p_text = gr.Textbox(label="parameters", lines=5, interactive=False, elem_id="png-parameters")
                p_json = gr.JSON(label="Parsed")
                p_values = gr.State(None)
                p_send = gr.Button("Send to Generate", elem_id="png-send")
                p_provenance = gr.JSON(label="AI disclosure (XMP) and C2PA manifest", elem_id="png-provenance")

        # Every page: the license's attribution notice and the AI disclosure (ui/attribution.py).
        gr.HTML(FOOTER_HTML, elem_id="attribution")

        # ------------------------------------------------------------------------------------------ wiring
        register_api(service)  # first, so the public endpoints get the plain names generate / compare / history
        fill_outputs = [prompt, negative, checkpoint, steps, guidance, width, height, seed, randomize, preset,
                        checkpoint_info, current, settings, tabs, g_loras.accordion, g_loras.note,
                        *g_loras.values]  # fmt: skip
        checkpoint.input(
            handlers.switch_checkpoint,
            [checkpoint, steps, guidance, current, settings],
            [steps, guidance, negative, checkpoint_info, preset, current, settings],
            queue=False, **private,
        )  # fmt: skip
        guidance.change(handlers.negative_visibility, guidance, negative, queue=False, **private)
        preset.input(handlers.apply_preset, preset, [width, height], queue=False, **private)
        for side in (width, height):
            side.input(handlers.match_preset, [width, height, checkpoint], preset, queue=False, preprocess=False,
                       **private)  # fmt: skip

        gen_inputs = [
            prompt,
            negative,
            checkpoint,
            steps,
            guidance,
            width,
            height,
            seed,
            randomize,
            num_images,
            results,
            *g_loras.values,  # after `results`: the handler takes them after the request (ui/handlers.py)
            init_editor,
            strength,
            feather,
            *outpaint,
            reused_mask,
        ]
        gen_outputs = [preview, progress, gallery, seed_used, results]
        # Gradio's own tracker only on the progress line: it shows the queue position and the wait there, and no
        # spinner or badge on the images.
        run = {"show_progress": "full", "show_progress_on": progress, **gpu}
        # Every button that starts one of Generate's runs, held together while one is in flight (Generate first), and
        # the page's flag that refuses a run asked for by Enter in the prompt box meanwhile (no button to hold there).
        run_buttons = [generate_btn, vary_btn, up15_btn, up2_btn, h_upscale]
        assert len(run_buttons) == RUN_BUTTONS
        in_flight = gr.State(False)
        hold = [in_flight, *run_buttons]

        def held_run(listen, work, inputs) -> None:
            """`work` run after `listen`'s event with the run buttons held, unless a run is already in flight."""
            listen(handlers.queued, in_flight, hold, queue=False, **private).success(
                work, inputs, gen_outputs, **run
            ).then(handlers.idle, None, hold, queue=False, **private).then(*status_read, queue=False, **private)

        for trigger in (generate_btn.click, prompt.submit):
            held_run(trigger, handlers.generate, gen_inputs)
        cancel_btn.click(handlers.cancel, None, progress, queue=False, **private)
        start_inputs = [init_editor, strength, feather, *outpaint]
        # What the note under the editor is said from, besides the editor: for the handlers that put a picture in
        # and say the note themselves (ui/handlers.py `send_to_image`, `place_source` say why).
        note_inputs = [strength, feather, *outpaint, reused_mask]
        note_outputs = [init_note, reused_box, reused_preview]
        # "Reuse settings" and PNG info's "Send to Generate" in two steps: the settings with the editor emptied
        # (ui/handlers.py `reuse_source`, `png_source`), then the picture and the note (`place_source`).
        source_outputs = [strength, image_panel, feather, *outpaint, reused_mask, placed, init_editor]
        place = (handlers.place_source, [placed, *note_inputs], [init_editor, *note_outputs, placed, placed_mark])
        send_outputs = [init_editor, *note_outputs, placed, placed_mark, image_panel, tabs]
        editor_inputs = [*start_inputs, reused_mask, placed_mark, placed]
        init_editor.change(handlers.editor_changed, editor_inputs, note_outputs, trigger_mode="always_last",
                           **private)  # fmt: skip
        # A picture uploaded after "reuse settings" (which sets the feather to 0: its mask came already feathered)
        # gets the default feather back; the reused picture itself keeps 0. The same event fills the note and the
        # reused mask's preview: the change event often comes before the picture is in (ui/handlers.py
        # `editor_uploaded`). Its progress shows on the feather alone, as when that was its only output: with the
        # note among the targets the editor sent its upload event twice, uploading its picture again (measured on
        # a 256² upload: 45 upload requests instead of 27).
        init_editor.upload(handlers.editor_uploaded, editor_inputs, [feather, *note_outputs], show_progress_on=feather,
                           queue=False, **private)  # fmt: skip
        for control in (strength, feather, *outpaint):
            control.input(handlers.settings_changed, [*start_inputs, reused_mask, placed],
                          [init_note, placed, placed_mark], trigger_mode="always_last", **private)  # fmt: skip
        gallery.select(handlers.select_result, results, [details, reuse_btn, vary_btn, selected], **private).success(
            handlers.result_actions, selected, [send_btn, up15_btn, up2_btn], queue=False, **private
        )
        reuse_btn.click(handlers.reuse, [selected, settings], fill_outputs, **private).success(
            handlers.reuse_source, [selected, placed], source_outputs, **private
        ).success(*place, queue=False, **private)
        send_btn.click(handlers.send_to_image, [selected, *note_inputs, placed], send_outputs, **private)
        for button, factor in ((up15_btn, 1.5), (up2_btn, 2.0)):
            held_run(button.click, handlers.upscaler(factor), [selected, results])
        held_run(vary_btn.click(handlers.vary, [selected, settings], fill_outputs, **private).success,
                 handlers.generate, gen_inputs)  # fmt: skip

        compare_btn.click(handlers.compare_queued, None, compare_btn, queue=False, **private).then(
            handlers.compare,
            [c_prompt, c_negative, c_seed, c_random, c_width, c_height, c_raw_steps, c_raw_guidance, c_turbo_steps,
             c_mode, c_lora_checkpoint, *c_loras.values, c_init, c_strength],
            [c_progress, c_raw, c_turbo, c_slider, c_info],
            show_progress="full", show_progress_on=c_progress, **gpu,
        ).then(handlers.compare_idle, None, compare_btn, queue=False, **private).then(
            *status_read, queue=False, **private
        )  # fmt: skip
        wire_lora_pickers([g_loras, c_loras], handlers.loras, private)
        app.load(handlers.loras.refresh, g_loras.names, [g_loras.note, *g_loras.names], queue=False, **private)
        app.load(handlers.loras.refresh, c_loras.names, [c_loras.note, *c_loras.names], queue=False, **private)
        c_cancel.click(handlers.cancel_compare, None, c_progress, queue=False, **private)
        # The checkpoint choice means something only when comparing without and with LoRAs.
        c_mode.change(lambda mode: gr.update(visible=mode == COMPARE_LORAS), c_mode, c_lora_checkpoint, queue=False,
                      **private)  # fmt: skip

        h_inputs = [h_search, h_checkpoint, h_favorites, h_comparisons, h_nav, h_lora]
        h_outputs = [h_gallery, h_count, h_nav, h_detail, h_pick, h_newer, h_older]
        for trigger in (h_search.submit, h_refresh.click, h_checkpoint.input, h_favorites.input, h_comparisons.input,
                        h_lora.input):  # fmt: skip
            trigger(handlers.history, h_inputs, h_outputs, **private)
        for trigger in (app.load, history_tab.select, h_refresh.click):
            trigger(handlers.loras.history_choices, None, h_lora, queue=False, **private)
        h_older.click(lambda *a: handlers.history(*a, direction="older"), h_inputs, h_outputs, **private)
        h_newer.click(lambda *a: handlers.history(*a, direction="newer"), h_inputs, h_outputs, **private)
        # History loads with the page and again whenever its tab is opened (new generations show up); that reload
        # leaves open details open (a tile clicked just after opening the tab lost its details when it landed).
        app.load(handlers.history, h_inputs, h_outputs, **private)
        history_tab.select(handlers.history_reopened, h_inputs, h_outputs, **private)
        h_gallery.select(
            handlers.select_history, h_nav,
            [h_detail, h_image, h_params, h_selected, h_favorite, h_download, h_confirm], **private,
        ).success(handlers.history_source, h_selected, h_source, **private)  # fmt: skip
        h_favorite.click(handlers.toggle_favorite, h_selected, h_favorite, **private).success(
            handlers.history_tiles, h_inputs, h_outputs[:4], **private
        )
        h_reuse.click(handlers.reuse, [h_selected, settings], fill_outputs, **private).success(
            handlers.reuse_source, [h_selected, placed], source_outputs, **private
        ).success(*place, queue=False, **private)
        h_send.click(handlers.send_to_image, [h_selected, *note_inputs, placed], send_outputs, **private)
        # Runs on the Generate tab as Generate's own runs do: its button held until the pass is done.
        held_run(h_upscale.click(lambda: gr.Tabs(selected="generate"), None, tabs, queue=False, **private).then,
                 handlers.upscaler(2.0), [h_selected, results])  # fmt: skip
        h_delete.click(handlers.ask_delete, None, h_confirm, queue=False, **private)
        h_confirm.click(handlers.delete, h_selected, [h_detail, h_selected, h_confirm], **private).then(
            handlers.history, h_inputs, h_outputs, **private
        )

        h_pick_all.click(handlers.pick_all, h_nav, h_pick, queue=False, **private)
        h_bulk_favorite.click(handlers.bulk_favorite, h_pick, None, **private).success(
            handlers.history, h_inputs, h_outputs, **private
        )
        h_bulk_zip.click(handlers.bulk_download, h_pick, h_archive, **private)
        h_bulk_delete.click(handlers.bulk_ask_delete, h_pick, h_bulk_confirm, **private)
        h_bulk_confirm.click(handlers.bulk_delete, h_pick, h_bulk_confirm, **private).then(
            handlers.history, h_inputs, h_outputs, **private
        )
        h_export.click(handlers.export_all, None, [h_archive, h_transfer], show_progress_on=h_transfer, **private)
        h_import.upload(handlers.import_history, h_import, h_transfer, show_progress="full", **private).success(
            handlers.history, h_inputs, h_outputs, **private
        )

        p_file.change(handlers.png_info, p_file, [p_text, p_json, p_values], **private)
        p_send.click(handlers.send_png_to_generate, [p_values, settings], fill_outputs, **private).success(
            handlers.png_source, [p_values, placed], source_outputs, **private
        ).success(*place, queue=False, **private)
        p_file.change(handlers.png_provenance, p_file, p_provenance, **private)
    return app
