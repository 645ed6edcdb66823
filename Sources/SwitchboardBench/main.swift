// placeholder until the generator lands
print("switchboard-bench")
