import sys

from mono_llm.openai_api.cli import main

sys.exit(main())
