-- KEYS[1] = a counter. ARGV[1] = a value. Returns {count after this call, ARGV[1]}.
return {counted(KEYS[1]), ARGV[1]}
