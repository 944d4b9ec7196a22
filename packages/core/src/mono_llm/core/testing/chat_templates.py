"""Chat templates of the fixture model families, written in the style of the real ones.

They are original renditions of each family's prompt format (Llama 3 headers, Mistral
[INST] turns, ChatML, Phi-3 role tags, Gemma turns, Granite 3 roles, OLMo 2's Tulu turns), small but complete enough to exercise system, tool and
multi-part messages, add_generation_prompt and continue_final_message.
"""

LLAMA3 = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['content'] is string %}{%- set text = message['content'] %}"
    "{%- else %}{%- set text = message['content'] | selectattr('type', 'equalto', 'text') "
    "| map(attribute='text') | join('') %}{%- endif %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + text | trim }}"
    "{%- if message.get('tool_calls') %}"
    "{%- for call in message['tool_calls'] %}"
    "{{- '{\"name\": \"' + call['function']['name'] + '\", \"parameters\": ' "
    "+ (call['function']['arguments'] if call['function']['arguments'] is string "
    "else call['function']['arguments'] | tojson) + '}' }}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)

MISTRAL = (
    "{{- bos_token }}"
    "{%- set system = namespace(text='') %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{%- set system.text = message['content'] + '\\n\\n' %}"
    "{%- elif message['role'] == 'user' %}"
    "{{- '[INST] ' + system.text + message['content'] + ' [/INST]' }}"
    "{%- set system.text = '' %}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- ' ' + message['content'] }}{%- if not loop.last %}{{- eos_token }}{%- endif %}"
    "{%- elif message['role'] == 'tool' %}"
    "{{- '[TOOL_RESULTS] ' + message['content'] + ' [/TOOL_RESULTS]' }}"
    "{%- endif %}"
    "{%- endfor %}"
)

CHATML = (
    "{%- for message in messages %}"
    "{%- if message['content'] is string %}{%- set text = message['content'] %}"
    "{%- else %}{%- set text = message['content'] | selectattr('type', 'equalto', 'text') "
    "| map(attribute='text') | join('') %}{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + text + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and not enable_thinking %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

# Phi-3 / Phi-3.5 / Phi-4-mini: each turn is "<|role|>\n" + text + "<|end|>\n"; the model ends
# its answer with <|end|> (an EOS id of generation_config.json). A finished conversation (no
# generation prompt) closes with the eos token, as a training sample does.
PHI3 = (
    "{%- for message in messages %}"
    "{%- if message['content'] is string %}{%- set text = message['content'] %}"
    "{%- else %}{%- set text = message['content'] | selectattr('type', 'equalto', 'text') "
    "| map(attribute='text') | join('') %}{%- endif %}"
    "{{- '<|' + message['role'] + '|>\n' + text + '<|end|>\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\n' }}"
    "{%- else %}{{- eos_token }}{%- endif %}"
)

# LLaVA-1.5: "USER: <image>\n<text> ASSISTANT:" turns; each image part becomes one <image>
# placeholder ahead of the message's text, which the processor expands to the patch count.
# Accepts OpenAI-style "image_url" parts as well as transformers' "image" parts.
LLAVA = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}"
    "{%- set prefix = '' %}"
    "{%- elif message['role'] == 'assistant' %}{%- set prefix = 'ASSISTANT: ' %}"
    "{%- else %}{%- set prefix = 'USER: ' %}{%- endif %}"
    "{{- prefix }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}"
    "{%- for part in message['content'] if part['type'] in ['image', 'image_url'] %}"
    "{{- '<image>\\n' }}{%- endfor %}"
    "{%- for part in message['content'] if part['type'] == 'text' %}"
    "{{- part['text'] }}{%- if not loop.last %}{{- ' ' }}{%- endif %}{%- endfor %}"
    "{%- endif %}"
    "{%- if message['role'] == 'assistant' %}{{- eos_token }}{%- endif %}"
    "{{- ' ' if message['role'] != 'assistant' else '' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- 'ASSISTANT:' }}{%- endif %}"
)

# Qwen2-VL: ChatML with a default system turn; every image part, where it stands among the
# text parts, becomes <|vision_start|><|image_pad|><|vision_end|>, and the processor expands
# the pad token to one token per merged 2x2 patch group.
QWEN2_VL = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] in ['image', 'image_url'] %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'text' %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Gemma: <start_of_turn>user / model turns. Like the released template it has no system role
# and refuses one (raise_exception), and calls the assistant "model".
GEMMA = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}"
    "{{- raise_exception('System role not supported') }}{%- endif %}"
    "{%- if message['content'] is string %}{%- set text = message['content'] %}"
    "{%- else %}{%- set text = message['content'] | selectattr('type', 'equalto', 'text') "
    "| map(attribute='text') | join('') %}{%- endif %}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{- '<start_of_turn>' + role + '\\n' + text | trim + '<end_of_turn>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<start_of_turn>model\\n' }}{%- endif %}"
)

# Granite 3: each turn is "<|start_of_role|>role<|end_of_role|>" + text + "<|end_of_text|>\n",
# the model ends its answer with <|end_of_text|> (its only EOS). Without a system message the
# released template writes a default one; this rendition writes a short one likewise.
GRANITE = (
    "{%- if not messages or messages[0]['role'] != 'system' %}"
    "{{- '<|start_of_role|>system<|end_of_role|>You are Granite, a helpful assistant."
    "<|end_of_text|>\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['content'] is string %}{%- set text = message['content'] %}"
    "{%- else %}{%- set text = message['content'] | selectattr('type', 'equalto', 'text') "
    "| map(attribute='text') | join('') %}{%- endif %}"
    "{{- '<|start_of_role|>' + message['role'] + '<|end_of_role|>' + text + '<|end_of_text|>\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_of_role|>assistant<|end_of_role|>' }}{%- endif %}"
)

# OLMo 2 instruct (Tulu turns): BOS, then "<|role|>\n" + text + "\n" per turn; an assistant
# turn ends with the EOS instead of the newline's place (and a newline unless it is the last).
OLMO2 = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['content'] is string %}{%- set text = message['content'] %}"
    "{%- else %}{%- set text = message['content'] | selectattr('type', 'equalto', 'text') "
    "| map(attribute='text') | join('') %}{%- endif %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|assistant|>\n' + text + eos_token }}{%- if not loop.last %}{{- '\n' }}{%- endif %}"
    "{%- else %}{{- '<|' + message['role'] + '|>\n' + text + '\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\n' }}{%- endif %}"
)

# Gemma 3: Gemma's turns, but a leading system message is accepted and folded into the first
# user turn (its text, a blank line, then the user's), as the released template does.
GEMMA3 = (
    "{{- bos_token }}"
    "{%- set ns = namespace(prefix='') %}"
    "{%- set turns = messages %}"
    "{%- if messages and messages[0]['role'] == 'system' %}"
    "{%- if messages[0]['content'] is string %}{%- set ns.prefix = messages[0]['content'] %}"
    "{%- else %}{%- set ns.prefix = messages[0]['content'] | selectattr('type', 'equalto', "
    "'text') | map(attribute='text') | join('') %}{%- endif %}"
    "{%- set ns.prefix = ns.prefix + '\\n\\n' %}"
    "{%- set turns = messages[1:] %}{%- endif %}"
    "{%- for message in turns %}"
    "{%- if message['role'] == 'system' %}"
    "{{- raise_exception('System role is only supported as the first message') }}{%- endif %}"
    "{%- if message['content'] is string %}{%- set text = message['content'] %}"
    "{%- else %}{%- set text = message['content'] | selectattr('type', 'equalto', 'text') "
    "| map(attribute='text') | join('') %}{%- endif %}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{- '<start_of_turn>' + role + '\\n' + (ns.prefix if loop.first else '') "
    "+ text | trim + '<end_of_turn>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<start_of_turn>model\\n' }}{%- endif %}"
)
