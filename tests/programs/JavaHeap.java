// A JVM workload for checkpoint/restore tests: a 96 MiB heap of known contents,
// four counting threads, and a main loop that re-checks the heap, triggers a
// full GC (which moves objects) and reports "OK|BAD count count count count"
// to DIR/java.result (replaced atomically) every 100 ms.
import java.nio.file.*;
import java.util.concurrent.atomic.AtomicLong;

public class JavaHeap {
    public static void main(String[] args) throws Exception {
        Path dir = Paths.get(args[0]);
        byte[][] heap = new byte[96][];
        long expect = 0;
        for (int i = 0; i < heap.length; i++) {
            heap[i] = new byte[1 << 20];
            for (int j = 0; j < heap[i].length; j += 61) {
                heap[i][j] = (byte) (i * 31 + j);
                expect += heap[i][j];
            }
        }
        AtomicLong[] counters = new AtomicLong[4];
        for (int t = 0; t < counters.length; t++) {
            AtomicLong c = counters[t] = new AtomicLong();
            Thread th = new Thread(() -> {
                while (true) {
                    c.incrementAndGet();
                    try { Thread.sleep(5); } catch (InterruptedException e) { return; }
                }
            });
            th.setDaemon(true);
            th.start();
        }
        long pid = ProcessHandle.current().pid();
        Files.writeString(dir.resolve("java.ready"), pid + "\n");
        Path tmp = dir.resolve("java.result.tmp");
        while (true) {
            long sum = 0;
            for (byte[] b : heap)
                for (int j = 0; j < b.length; j += 61) sum += b[j];
            StringBuilder sb = new StringBuilder(sum == expect ? "OK" : "BAD");
            for (AtomicLong c : counters) sb.append(' ').append(c.get());
            Files.writeString(tmp, sb.append('\n').toString());
            Files.move(tmp, dir.resolve("java.result"), StandardCopyOption.REPLACE_EXISTING);
            System.gc();
            Thread.sleep(100);
        }
    }
}
