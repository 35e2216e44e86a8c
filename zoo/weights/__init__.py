"""Weight files shipped with the package (fp16 safetensors of the zoo's own small models)."""
