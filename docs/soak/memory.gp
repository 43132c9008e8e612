# gnuplot script of `make soak-plot`: docs/soak/samples.csv (written by tests/soak.rs) to
# docs/soak/memory.png, one panel per measure, both sidecars, MiB over minutes.
set datafile separator ","
set terminal pngcairo size 900,780 font ",10"
set output "docs/soak/memory.png"
set key bottom right
set grid
set xlabel "minutes"
mib(x) = x / 1048576.0
set multiplot layout 3,1 title "Soak: memory of both sidecars (samples every 30 s)"
set ylabel "RSS (MiB)"
plot "docs/soak/samples.csv" skip 1 using ($1/60):(mib($2)) with linespoints title "client sidecar", \
     "" skip 1 using ($1/60):(mib($5)) with linespoints title "server sidecar"
set ylabel "/memory allocated (MiB)"
plot "docs/soak/samples.csv" skip 1 using ($1/60):(mib($3)) with linespoints title "client sidecar", \
     "" skip 1 using ($1/60):(mib($6)) with linespoints title "server sidecar"
set ylabel "Wasm linear memory (MiB)"
plot "docs/soak/samples.csv" skip 1 using ($1/60):(mib($4)) with linespoints title "client sidecar", \
     "" skip 1 using ($1/60):(mib($7)) with linespoints title "server sidecar"
unset multiplot
