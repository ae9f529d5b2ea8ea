#!/usr/bin/perl
# worst-cases.pl KIND OUT - craft a consistent qcow2 image (64 KiB clusters, 16-bit refcounts,
# refcounts exact, qemu-img check clean) at one of QEMU's metadata limits, for the resource
# bounds of tests/corrupt/resources.sh. KIND:
#   l1max      l1_size 4194304 (QCOW_MAX_L1_SIZE, 32 MiB of L1), virtual size 2 PiB
#   snapmax    65536 snapshots (QCOW_MAX_SNAPSHOTS), 1024 bytes each: a 64 MiB table
#   bitmaps    65535 bitmaps (QCOW2_MAX_BITMAPS), short names, all sharing one bitmap table
#              cluster (refcount 65535, the 16-bit maximum)
#   bitmapdir  65535 bitmaps with 1000-byte names: a 64 MiB - 64 KiB bitmap directory
#              (QCOW2_MAX_BITMAP_DIRECTORY_SIZE is 64 MiB)
# Layout: cluster 0 header, 1 refcount table, 2 refcount block, 3.. L1, then the table of KIND.
use strict;
use warnings;

my ($kind, $out) = @ARGV;
die "usage: $0 l1max|snapmax|bitmaps|bitmapdir OUT\n" unless $out;
my $cs = 65536;
my $size = 64 << 20;             # virtual size
my @ref;                         # refcount of each cluster
my $next = 3;                    # first free cluster
my %chunk;                       # cluster offset => bytes

sub alloc {                      # clusters for LEN bytes of DATA; returns the offset
    my ($data) = @_;
    my $n = int((length($data) + $cs - 1) / $cs) || 1;
    my $off = $next * $cs;
    $ref[$next + $_] = 1 for 0 .. $n - 1;
    $chunk{$off} = $data;
    $next += $n;
    return $off;
}
sub pad8 { my $s = shift; return $s . ("\0" x ((8 - length($s) % 8) % 8)); }

my $l1_size = 1;
if ($kind eq 'l1max') {
    $l1_size = 4194304;
    $size = $l1_size * ($cs / 8) * $cs;
}
my $l1_off = alloc("\0" x ($l1_size * 8));
my ($nb_snap, $snap_off, $ext) = (0, 0, '');
my $autoclear = 0;

if ($kind eq 'snapmax') {
    $nb_snap = 65536;
    my $t = '';
    for my $i (1 .. $nb_snap) {
        my ($id, $name) = ("$i", sprintf("snapshot-%05d", $i));
        # extra data: vm_state_size_large, disk_size, icount, then zeros up to the entry size
        my $extra_len = 1024 - 40 - length($id) - length($name);
        $extra_len -= $extra_len % 8;
        my $extra = pack('Q>Q>q>', 0, $size, -1) . ("\0" x ($extra_len - 24));
        $t .= pad8(pack('Q>NnnNNQ>NN', 0, 0, length($id), length($name), 0, 0, 0, 0, $extra_len)
                   . $extra . $id . $name);
    }
    $snap_off = alloc($t);
} elsif ($kind eq 'bitmaps' || $kind eq 'bitmapdir') {
    my $n = 65535;
    my $table = $next;
    alloc("\0" x 8);             # one bitmap table (1 entry: all zeros), shared by every bitmap
    $ref[$table] = $n;
    my $dir = '';
    for my $i (1 .. $n) {
        my $name = sprintf("b%05d", $i);
        $name .= 'x' x (1000 - length($name)) if $kind eq 'bitmapdir';
        $dir .= pad8(pack('Q>NNCCnN', $table * $cs, 1, 0, 1, 16, length($name), 0) . $name);
    }
    my $dir_off = alloc($dir);
    $ext = pack('NN', 0x23852875, 24) . pack('NNQ>Q>', $n, 0, length($dir), $dir_off);
    $autoclear = 1;
}

# header (v3, 104 bytes) + extensions + end marker
my $hdr = pack('NNQ>NNQ>NNQ>Q>NNQ>Q>Q>Q>NN', 0x514649FB, 3, 0, 0, 16, $size, 0, $l1_size, $l1_off,
               $cs, 1, $nb_snap, $snap_off, 0, 0, $autoclear, 4, 104) . $ext . pack('NN', 0, 0);
$ref[0] = $ref[1] = $ref[2] = 1;
die "refcount block too small\n" if $next > $cs / 2;
my $rb = pack('n*', map { $_ // 0 } @ref[0 .. $next - 1]);

open(my $f, '+>:raw', $out) or die "$out: $!\n";
my %w = (0 => $hdr, $cs => pack('Q>', 2 * $cs), 2 * $cs => $rb, %chunk);
for my $off (sort { $a <=> $b } keys %w) {
    seek($f, $off, 0) or die;
    print $f $w{$off};
}
truncate($f, $next * $cs) or die;
close($f) or die;
