/*
 * A C replica of the pfvar.h structures ftp-proxy uses, written from the field
 * lists of behavior.md section 15 with natural C types and NO explicit padding,
 * so that the C compiler, not the Rust mirror, decides where padding goes.
 * Used by the layout test on hosts without <net/pfvar.h>; on OpenBSD the same
 * test includes the real header instead. Define PF_1548 for the 1.548 layout.
 *
 * OpenBSD/amd64 scalar types are spelled out (sa_family_t is one byte there,
 * time_t eight), so the replica means the same on Linux/x86_64.
 */
#include <stdint.h>
#include <stddef.h>

typedef uint8_t  ob_u8;
typedef uint16_t ob_u16;
typedef uint32_t ob_u32;
typedef uint64_t ob_u64;
typedef uint8_t  ob_sa_family_t;
typedef int64_t  ob_time_t;
typedef uint32_t ob_uid_t;
typedef int32_t  ob_pid_t;

struct pf_addr {
	union {
		ob_u8	addr8[16];
		ob_u16	addr16[8];
		ob_u32	addr32[4];
	} pfa;
};

struct pf_addr_wrap {
	union {
		struct {
			struct pf_addr	addr;
			struct pf_addr	mask;
		} a;
		char	ifname[16];
		char	tblname[32];
		char	rtlabelname[32];
		ob_u32	rtlabel;
	} v;
	union {
		void	*dyn;
		void	*tbl;
		int	dyncnt;
		int	tblcnt;
	} p;
	ob_u8	type;
	ob_u8	iflags;
};

struct pf_rule_addr {
	struct pf_addr_wrap	addr;
	ob_u16			port[2];
	ob_u8			neg;
	ob_u8			port_op;
	ob_u16			weight;
};

struct pf_poolhashkey {
	union {
		ob_u8	key8[16];
		ob_u16	key16[8];
		ob_u32	key32[4];
	} pfk;
};

struct pf_pool {
	struct pf_addr_wrap	addr;
	struct pf_poolhashkey	key;
	struct pf_addr		counter;
	char			ifname[16];
	void			*kif;
	int			tblidx;
	ob_u64			states;
	int			curweight;
	ob_u16			weight;
	ob_u16			proxy_port[2];
	ob_u8			port_op;
	ob_u8			opts;
};

struct pf_threshold {
	ob_u32	limit;
	ob_u32	seconds;
	ob_u32	count;
	ob_u32	last;
};

struct pf_rule_uid {
	ob_uid_t	uid[2];
	ob_u8		op;
};

struct pf_rule_gid {
	ob_uid_t	gid[2];
	ob_u8		op;
};

union pf_rule_ptr {
	void	*ptr;
	ob_u32	nr;
};

struct pf_rule {
	struct pf_rule_addr	src;
	struct pf_rule_addr	dst;
	union pf_rule_ptr	skip[9];
	char			label[64];
	char			ifname[16];
	char			rcv_ifname[16];
	char			qname[64];
	char			pqname[64];
	char			tagname[64];
	char			match_tagname[64];
	char			overload_tblname[32];
	struct {
		void	*tqe_next;
		void	**tqe_prev;
	}			entries;
	struct pf_pool		nat;
	struct pf_pool		rdr;
	struct pf_pool		route;
	struct pf_threshold	pktrate;
	ob_u64			evaluations;
	ob_u64			packets[2];
	ob_u64			bytes[2];
	void			*kif;
	void			*rcv_kif;
	void			*anchor;
	void			*overload_tbl;
	ob_u32			os_fingerprint;
	int			rtableid;
	int			onrdomain;
	ob_u32			timeout[20];
	ob_u32			states_cur;
	ob_u32			states_tot;
	ob_u32			max_states;
	ob_u32			src_nodes;
	ob_u32			max_src_nodes;
	ob_u32			max_src_states;
	ob_u32			max_src_conn;
	struct {
		ob_u32	limit;
		ob_u32	seconds;
	}			max_src_conn_rate;
	ob_u32			qid;
	ob_u32			pqid;
	ob_u32			rt_listid;
	ob_u32			nr;
	ob_u32			prob;
	ob_uid_t		cuid;
	ob_pid_t		cpid;
	ob_u16			return_icmp;
	ob_u16			return_icmp6;
	ob_u16			max_mss;
	ob_u16			tag;
	ob_u16			match_tag;
	ob_u16			scrub_flags;
	ob_u16			delay;
	struct pf_rule_uid	uid;
	struct pf_rule_gid	gid;
	ob_u32			rule_flag;
	ob_u8			action;
	ob_u8			direction;
	ob_u8			log;
	ob_u8			logif;
	ob_u8			quick;
	ob_u8			ifnot;
	ob_u8			match_tag_not;
	ob_u8			keep_state;
	ob_sa_family_t		af;
	ob_u8			proto;
	ob_u16			type;
	ob_u16			code;
	ob_u8			flags;
	ob_u8			flagset;
	ob_u8			min_ttl;
	ob_u8			allow_opts;
	ob_u8			rt;
	ob_u8			return_ttl;
	ob_u8			tos;
	ob_u8			set_tos;
	ob_u8			anchor_relative;
	ob_u8			anchor_wildcard;
	ob_u8			flush;
	ob_u8			prio;
	ob_u8			set_prio[2];
	ob_sa_family_t		naf;
	ob_u8			rcvifnot;
#ifdef PF_1548
	struct {
		ob_u8	id;
		int	limiter_action;
	}			statelim;
	struct {
		ob_u8	id;
		int	limiter_action;
	}			sourcelim;
#endif
	struct {
		struct pf_addr	addr;
		ob_u16		port;
		ob_u8		type;
	}			divert;
	ob_time_t		exptime;
};

struct pfioc_rule {
	ob_u32		action;
	ob_u32		ticket;
	ob_u32		nr;
	char		anchor[1024];
	char		anchor_call[1024];
	struct pf_rule	rule;
};

struct pfioc_trans {
	int		size;
	int		esize;
	struct pfioc_trans_e {
		int	type;
		char	anchor[1024];
		ob_u32	ticket;
	}		*array;
};

struct pfioc_ruleset {
	ob_u32	nr;
	char	path[1024];
	char	name[64];
};

struct pf_state_cmp {
	ob_u64	id;
	ob_u32	creatorid;
	ob_u8	direction;
	ob_u8	pad[3];
};

struct pfioc_state_kill {
	struct pf_state_cmp	psk_pfcmp;
	ob_sa_family_t		psk_af;
	int			psk_proto;
	struct pf_rule_addr	psk_src;
	struct pf_rule_addr	psk_dst;
	char			psk_ifname[16];
	char			psk_label[64];
	unsigned int		psk_killed;
	ob_u16			psk_rdomain;
};

struct pf_status {
	ob_u64		counters[17];
	ob_u64		lcounters[10];
	ob_u64		fcounters[3];
	ob_u64		scounters[3];
	ob_u64		ncounters[3];
	ob_u64		pcounters[2][2][3];
	ob_u64		bcounters[2][2];
	ob_u64		stateid;
	ob_u64		syncookies_inflight[2];
	ob_time_t	since;
	ob_u32		running;
	ob_u32		states;
	ob_u32		states_halfopen;
	ob_u32		src_nodes;
	ob_u32		fragments;
	ob_u32		debug;
	ob_u32		hostid;
	ob_u32		reass;
	ob_u8		syncookies_active;
	ob_u8		syncookies_mode;
	ob_u8		pad[2];
	char		ifname[16];
	ob_u8		pf_chksum[16];
};
