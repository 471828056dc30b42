"""Chat templates as transformers renders them (sandboxed Jinja), and the project's hand-written chat
formats written out as templates, for tokenizer.py.

Imports: regex, and jinja2 (installed with torch) when a template is compiled.
"""
import datetime
import json

import regex

# User content must never become special tokens. So a template is rendered with a slot in place of each
# message's content; the text is split at the special tokens the template itself wrote; each content goes
# back into its slot; and the text between two specials is encoded in one piece, as transformers does.
# A slot is private-use brackets around the message index, padded with \x1f, which str.strip (Jinja's
# `trim`) removes: a missing pad shows that the template trims the content on that side.
SLOT = regex.compile("(\x1f?)\ue000(\\d+)\ue001(\x1f?)")


def slot(i: int) -> str:
    return f"\x1f\ue000{i}\ue001\x1f"


def compile_template(source: str, where: str):
    """A chat template as transformers renders it: sandboxed Jinja with trim_blocks, lstrip_blocks and
    loop controls; its tojson (no HTML escaping), raise_exception and strftime_now."""
    import jinja2
    from jinja2 import ext, sandbox

    def raise_exception(message):
        raise jinja2.TemplateError(message)

    env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[ext.loopcontrols])
    env.filters["tojson"] = lambda x, ensure_ascii=False, **kw: json.dumps(x, ensure_ascii=ensure_ascii, **kw)
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.datetime.now().strftime(fmt))
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ValueError(f"{where}: chat template, line {e.lineno}: {e.message}") from e


def builtin_template(chat_format: str, default_system: str | None) -> str:
    """The hand-written formats as Jinja, for save_hf: transformers renders them into our ids.
    (A JSON string is a valid Jinja string literal: Jinja unescapes as Python does.)"""
    if chat_format == "llama3":
        return ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
                "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
                "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
    if chat_format == "chatml":
        system = "" if default_system is None else (
            "{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n' + "
            f"{json.dumps(default_system, ensure_ascii=False)} + '<|im_end|>\\n' }}}}{{% endif %}}")
        return ("{% for message in messages %}" + system + "{{ '<|im_start|>' + message['role'] + '\\n' + "
                "message['content'] + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
                "{{ '<|im_start|>assistant\\n' }}{% endif %}")
    return ("{% for message in messages %}{% if message['role'] == 'system' %}{{ raise_exception("
            "'the toy chat format has no system turn') }}{% endif %}{{ '<|' + message['role'] + '|>' + "
            "message['content'] + '<|end|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")
