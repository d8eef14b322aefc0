import llama_cpp, numpy as np, sys
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=64, n_batch=64, verbose=False, type_k=0, type_v=0)
llm.eval([1, 5, 9, 17])
a = np.ctypeslib.as_array(llama_cpp.llama_get_logits(llm.ctx), shape=(llm.n_vocab(),)).copy()
print("loaded; logits[:4] after 4 tokens:", a[:4])
llm.reset(); llm.eval([1, 5]); llm.eval([9]); llm.eval([17])
b = np.ctypeslib.as_array(llama_cpp.llama_get_logits(llm.ctx), shape=(llm.n_vocab(),)).copy()
print("one at a time equal within", float(np.abs(a - b).max()))
